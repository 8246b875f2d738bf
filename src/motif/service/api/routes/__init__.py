"""Thin routes: parse, call a service function, shape the response."""

from fastapi import APIRouter

from motif.service.api.routes import audio, generations, health, search

api_router = APIRouter(prefix="/api")
api_router.include_router(health.router)
api_router.include_router(audio.router)
api_router.include_router(generations.router)
api_router.include_router(search.router)
