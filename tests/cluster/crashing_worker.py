"""`motif worker` whose process dies (os._exit, as a segfault or the OOM killer would) on a job prompted CRASH."""

from __future__ import annotations

import os
import sys
from typing import Any

from motif.cli import app
from motif.service import remote_worker

CRASH = "crash-the-worker"
_prepare = remote_worker.FedGenerationWorker.prepare


def _prepare_or_die(self: remote_worker.FedGenerationWorker, row: Any) -> Any:
    if (row.params or {}).get("prompt") == CRASH:
        os._exit(3)
    return _prepare(self, row)


remote_worker.FedGenerationWorker.prepare = _prepare_or_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(app(sys.argv[1:]))
