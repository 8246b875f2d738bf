"""Thin routes: parse, call a service function, shape the response."""

from fastapi import APIRouter

from motif.service.api.routes import audio, events, generations, health, media, page, search, stream

api_router = APIRouter(prefix="/api")
api_router.include_router(health.router)
api_router.include_router(audio.router)
api_router.include_router(generations.router)
api_router.include_router(search.router)
api_router.include_router(events.router)
api_router.include_router(stream.router)
api_router.include_router(media.router)

page_router = page.router  # `/` and /static/*: outside /api and its auth
