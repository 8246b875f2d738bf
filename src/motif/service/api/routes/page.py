"""The page at `/`: plain static files from the package (HTML, CSS, vanilla JS; no build step), no auth.

The page itself holds no data: everything it shows comes from /api with the user's API key, if any.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)

STATIC = Path(str(files("motif.service.api").joinpath("static")))
ASSETS = {"app.js": "text/javascript", "api.js": "text/javascript", "app.css": "text/css",
          "favicon.svg": "image/svg+xml"}  # fmt: skip
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, f"no static file {name}")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=HEADERS)
