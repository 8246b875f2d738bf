"""The FastAPI application: `create_app()` (uvicorn's factory) wires settings, services and routes.

Heavy objects (database, blob store, engine, worker threads) are created in the lifespan, never at import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from motif import __version__
from motif.config import Settings
from motif.service.api.errors import install_error_handlers
from motif.service.api.middleware import RequestObserver
from motif.service.api.routes import api_router
from motif.service.api.routes.metrics import router as metrics_router
from motif.service.logs import configure_logging
from motif.service.metrics import Metrics
from motif.service.runtime import close_services, open_services

DESCRIPTION = """Upload a piece of music, get more music like it.

1. `POST /api/upload` a track (multipart field `file`) → `audio_id`
2. `GET /api/embedding/{audio_id}` → its 512-d CLAP vector
3. `POST /api/generate/{audio_id}` → `generation_id`
4. `GET /api/status/{generation_id}` until `completed`
5. `GET /api/download/{generation_id}` → the audio (WAV 32 kHz by default)
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; `settings` default to the environment and `.env`."""
    settings = settings or Settings()
    configure_logging(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await anyio.to_thread.run_sync(lambda: open_services(settings, metrics=metrics))
        app.state.services = services
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(close_services, services)

    app = FastAPI(title="Motif", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url="/docs", redoc_url="/redoc")  # fmt: skip
    install_error_handlers(app)
    app.add_middleware(RequestObserver, metrics=metrics)
    app.include_router(api_router)
    app.state.metrics = metrics
    metrics.watch(lambda: getattr(app.state, "services", None))
    if settings.metrics_enabled:
        app.include_router(metrics_router)  # outside /api: where Prometheus scrapes by default
    return app
