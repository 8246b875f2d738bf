"""GET /metrics: the process's Prometheus metrics (text exposition format), mounted outside /api."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from motif.service.metrics import Metrics


def require_metrics_access() -> None:
    """Who may read /metrics. Open for now; with REQUIRE_API_KEY it will demand an admin key.

    The hook the API-key work fills in: it runs before the route, so raising 401/404 here is enough.
    """


router = APIRouter(tags=["metrics"], dependencies=[Depends(require_metrics_access)])


@router.get("/metrics", response_class=Response, include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text format; queue depth and model states are read now (in a thread, not on the loop)."""
    registry: Metrics = request.app.state.metrics
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
