"""Accepting an upload: decode it once to prove it is usable audio, then store it with its row, atomically.

Files are written before the row that points at them and removed on any failure, so a refused or
interrupted upload leaves nothing behind (start-up sweeps what a killed process could not remove).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np

from motif.engine.types import SAMPLE_RATE
from motif.errors import EmptyAudioError
from motif.service.jobs import JobKind
from motif.service.runtime import Services
from motif.service.store import AudioRow, new_id

MAX_FILENAME_CHARS = 255
# FFmpeg demuxer name -> the suffix the stored original gets (for people browsing DATA_DIR).
_SUFFIXES = {"wav": ".wav", "mp3": ".mp3", "flac": ".flac", "ogg": ".ogg", "aiff": ".aiff", "matroska,webm": ".webm",
             "mov,mp4,m4a,3gp,3g2,mj2": ".m4a", "aac": ".aac", "w64": ".w64", "caf": ".caf"}  # fmt: skip


def clean_filename(name: str | None) -> str:
    """The client's file name as display metadata: last path component, printable, at most 255 chars."""
    name = unicodedata.normalize("NFC", name or "")
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return name[:MAX_FILENAME_CHARS] or "upload"


def ingest_upload(services: Services, staged: Path, filename: str, size: int, owner: str | None = None) -> AudioRow:
    """Decode, analyse and store a fully received upload; runs in a worker thread, never on the event loop.

    `staged` is a temp file in the blob store's staging area; on success it is moved into uploads/.
    `owner` is the uploading key's id (None when keys are off). The upload is decoded once, straight to
    32 kHz mono within the settings' DecodeLimits; the analysis and the stored copy both use that signal,
    so memory is bounded by MAX_DURATION at 32 kHz.
    Raises the AudioError subclasses of `load_audio` (the API maps them to 413/415/422).
    """
    from motif.analysis import analyze  # scipy, FFmpeg: imported by the first upload, not at start-up
    from motif.audio import DecodeLimits, load_audio

    if size == 0:
        raise EmptyAudioError("The file is empty.")
    settings, blobs = services.settings, services.blobs
    # Stereo stays stereo (stereo MusicGen continues each channel); analysis reads the mono mix.
    decoded = load_audio(staged, sample_rate=SAMPLE_RATE, limits=DecodeLimits.from_settings(settings), stereo=True)
    mono = decoded.samples.mean(axis=1) if decoded.samples.ndim == 2 else decoded.samples
    analysis = analyze(mono, decoded.sample_rate).to_dict()
    audio_id = new_id()
    upload_key = f"uploads/{audio_id}{_SUFFIXES.get(decoded.container, '.bin')}"
    processed_key = f"processed/{audio_id}.npy"
    row = AudioRow(id=audio_id, owner=owner, filename=clean_filename(filename), size_bytes=size,
                   duration=decoded.duration, sample_rate=decoded.source_sample_rate,
                   channels=decoded.source_channels, codec=decoded.codec, container=decoded.container,
                   analysis=analysis, upload_key=upload_key, processed_key=processed_key)  # fmt: skip
    try:
        with blobs.staging("processed") as npy:
            with open(npy, "wb") as file:  # straight to disk: no copy in memory
                np.save(file, decoded.samples, allow_pickle=False)
            blobs.put_file(processed_key, npy)
        blobs.put_file(upload_key, staged)
        with services.db.transaction() as session:
            session.add(row)
            services.queue.enqueue(session, JobKind.EMBEDDING, audio_id, owner=owner)
    except BaseException:
        blobs.delete(processed_key)
        blobs.delete(upload_key)
        raise
    services.workers.wake(JobKind.EMBEDDING)
    return row
