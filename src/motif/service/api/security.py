"""Who is calling: API keys (`Authorization: Bearer KEY` or `X-API-Key: KEY`), checked on every /api route.

Both schemes are declared in the OpenAPI document, so Swagger's Authorize button works. With
REQUIRE_API_KEY=false (the laptop default) every caller is the one open tenant and sees everything.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from motif.service.api.deps import ServicesDep
from motif.service.keys import OPEN, Principal, find_principal
from motif.service.quotas import QuotaExceeded
from motif.service.store import Scope

bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer", description="`Authorization: Bearer KEY`")
header_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey", description="`X-API-Key: KEY`")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="motif"'}

BearerDep = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
HeaderDep = Annotated[str | None, Security(header_scheme)]


def presented_principal(services: ServicesDep, bearer: BearerDep, header: HeaderDep) -> Principal | None:
    """The caller: OPEN when keys are off; the key's principal; None when no valid key was presented."""
    if not services.settings.require_api_key:
        return OPEN
    secret = bearer.credentials if bearer is not None else header
    return find_principal(services.db, secret) if secret else None


def authenticate(
    request: Request, services: ServicesDep, principal: Annotated[Principal | None, Depends(presented_principal)]
) -> Principal:
    """401 (with WWW-Authenticate) without a valid key; 429 past the key's request rate."""
    if principal is None:
        has_key = "authorization" in request.headers or "x-api-key" in request.headers
        reason = "this API key is unknown or revoked" if has_key else "an API key is required"
        raise HTTPException(401, f"{reason}: send `Authorization: Bearer KEY` or `X-API-Key: KEY`", CHALLENGE)
    try:
        services.quotas.hit_rate(principal)
    except QuotaExceeded as error:
        raise quota_error(error) from error
    request.state.principal = principal
    return principal


def require_admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """Admin keys only (when keys are required); another key gets 403."""
    if not principal.is_admin:
        raise HTTPException(403, "this needs an admin key")
    return principal


def quota_error(error: QuotaExceeded) -> HTTPException:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return HTTPException(error.status, error.detail, headers)


def caller_scope(principal: Annotated[Principal, Depends(authenticate)]) -> Scope:
    return principal.scope


PrincipalDep = Annotated[Principal, Depends(authenticate)]
ScopeDep = Annotated[Scope, Depends(caller_scope)]
