"""The generation controls in the API schema: validated with a reason, and carried to the engine unchanged."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from motif.engine import GenerationParams
from motif.service.api.schemas import GenerationRequest
from motif.service.worker import params_from_row


def test_controls_round_trip_from_the_request_through_the_row_to_the_engine() -> None:
    request = GenerationRequest(duration=8, continuation_start=2.5, continuation_end=9.0, include_prompt=True,
                                loop=False, bpm=96, key="F# minor")  # fmt: skip
    params = params_from_row(request.model_dump(mode="json"))
    assert params == GenerationParams(duration=8.0, continuation_start=2.5, continuation_end=9.0,
                                      include_prompt=True, bpm=96.0, key="F# minor")  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"continuation_start": 5, "continuation_end": 4}, "continuation_end must be after"),
        ({"key": "H minor"}, "key"),
        ({"bpm": 500}, "bpm"),
        ({"continuation_start": -1}, "continuation_start"),
    ],
)
def test_bad_controls_are_refused_naming_the_field(fields: dict, names: str) -> None:
    with pytest.raises(ValidationError, match=names):
        GenerationRequest(**fields)
