"""Thin routes: parse, call a service function, shape the response.

Every route but /api/health needs a key when REQUIRE_API_KEY is on (the dependency on `protected`).
"""

from fastapi import APIRouter, Depends

from motif.service.api.routes import audio, generations, health, search
from motif.service.api.security import authenticate

protected = APIRouter(dependencies=[Depends(authenticate)])
protected.include_router(audio.router)
protected.include_router(generations.router)
protected.include_router(search.router)

api_router = APIRouter(prefix="/api")
api_router.include_router(health.router)  # open to load balancers: anonymous callers learn ready or not
api_router.include_router(protected)
