"""The CUDA suite: every test here is marked `cuda` and skipped, saying why, where torch sees no usable GPU."""

from __future__ import annotations

import pytest

from motif.engine.models import cuda_unusable_reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = cuda_unusable_reason()
    for item in items:
        if "tests/gpu/" not in item.nodeid.replace("\\", "/"):
            continue
        item.add_marker(pytest.mark.cuda)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"CUDA suite: {reason}"))
