"""GET /health: ready or not, each model's state (and why it is missing), queue depth, workers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from motif import __version__
from motif.service.api.deps import ServicesDep
from motif.service.api.schemas import Health, ModelHealth, QueueDepth
from motif.service.api.security import presented_principal
from motif.service.keys import Principal
from motif.service.redact import scrub_paths

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, response_model_exclude_none=True)
def health(services: ServicesDep, caller: Annotated[Principal | None, Depends(presented_principal)]) -> Health:
    """Always 200 while the process serves; `ready` says whether jobs can run now. Open to anyone;
    the details are for admin keys when keys are required."""
    models = [ModelHealth(role=m.role, model_id=scrub_paths(m.model_id), state=m.state, detail=scrub_paths(m.detail))
              for m in services.model_states()]  # fmt: skip
    workers = services.workers.alive()
    ready = all(m.state == "loaded" for m in models) and all(workers.values())
    if ready:
        status = "ok"
    elif any(m.state == "error" for m in models) or not all(workers.values()):
        status = "degraded"
    else:
        status = "starting"
    if caller is None or not caller.is_admin:
        return Health(status=status, ready=ready)
    queue = {kind: QueueDepth(**depth) for kind, depth in services.queue.depth().items()}
    return Health(status=status, ready=ready, version=__version__, models=models, queue=queue, workers=workers)
