"""GET /metrics: the process's Prometheus metrics (text exposition format), mounted outside /api."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from motif.service.api.security import require_admin
from motif.service.metrics import Metrics

# Who may read: anyone while keys are off (the open principal is admin); with REQUIRE_API_KEY, admin keys only
# (401 without a key, 403 with another key). Swap or extend this list to change who may scrape.
METRICS_ACCESS = [Depends(require_admin)]
router = APIRouter(tags=["metrics"], dependencies=METRICS_ACCESS)


@router.get("/metrics", response_class=Response, include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text format; queue depth and model states are read now (in a thread, not on the loop)."""
    registry: Metrics = request.app.state.metrics
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
