"""FastAPI dependencies: the lifespan's service objects, reached per request as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from motif.config import Settings
from motif.service.runtime import Services

MAX_PAGE = 500


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_settings(services: Annotated[Services, Depends(get_services)]) -> Settings:
    return services.settings


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

AudioId = Annotated[str, Path(max_length=64, description="from POST /api/upload")]
GenerationId = Annotated[str, Path(max_length=64, description="from POST /api/generate/{audio_id}")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")]
Offset = Annotated[int, Query(ge=0, description="items to skip")]
TopK = Annotated[int, Query(ge=1, le=100, description="how many results")]
