"""An upload's default continuation prompt is encoded when it is ingested, where the generation model is loaded,
so the first continuation of a new upload starts without EnCodec's encoder."""

from __future__ import annotations

import shutil
from pathlib import Path

from motif.service import library
from motif.service.ingest import ingest_upload
from motif.service.runtime import close_services, open_services
from motif.service.store import EVERYONE
from tests.service.conftest import tiny_settings, wait_until
from tests.synth import music_like, write_format


def test_an_upload_s_prompt_is_encoded_at_ingest_and_its_first_continuation_reuses_the_codes(
    model_cache: Path, tmp_path: Path
) -> None:
    services = open_services(tiny_settings(model_cache, tmp_path / "data"))
    try:
        engine = services.host.engine
        wait_until(lambda: engine.generator_loaded, timeout=240, what="the generation model loaded")
        codes = engine.generator.prompt_codes
        path = write_format(tmp_path / "song.wav", music_like(12.0, 44_100, seed=2), 44_100, "wav16")
        with services.blobs.staging("uploads") as staged:
            shutil.copyfile(path, staged)
            row = ingest_upload(services, staged, "song.wav", path.stat().st_size)
        # No generation was asked for: only the ingest can have encoded a prompt.
        wait_until(lambda: codes.misses == 1, timeout=240, what="the prompt encoded at ingest")
        job = library.create_generation(services, EVERYONE, row.id, {"duration": 5.0, "seed": 3})
        assert job is not None
        done = wait_until(lambda: (j := services.queue.get(job.id)) is not None and j.status in
                          ("completed", "failed") and j, timeout=240, what="the generation")  # fmt: skip
        assert done.status == "completed", done.error
        # The continuation took the ingest's codes (kept, or still being encoded when it asked): one encoding.
        assert codes.misses == 1 and codes.hits + codes.joined == 1, (codes.misses, codes.hits, codes.joined)
    finally:
        close_services(services)
