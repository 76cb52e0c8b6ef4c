"""FastAPI dependencies: the server state and API-key auth."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from sparsejit.serve.state import ServerState

__all__ = ["State", "get_state", "require_api_key"]

# Security schemes (shown in the OpenAPI document, so /docs offers "Authorize"); checked below.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's API key")
_bearer = HTTPBearer(auto_error=False, description="the server's API key as a bearer token")


def get_state(request: Request) -> ServerState:
    """The :class:`ServerState` of the app handling ``request``."""
    return request.app.state.sparsejit


#: route parameter annotation that injects the server state.
State = Annotated[ServerState, Depends(get_state)]


def require_api_key(request: Request, api_key: Annotated[str | None, Depends(_api_key_header)],
                    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 unless the server has no API key or the request carries it (``X-API-Key`` or Bearer)."""
    expected = get_state(request).config.api_key
    if not expected:
        return
    given = api_key or (bearer.credentials if bearer is not None else None)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or invalid API key",
                            headers={"WWW-Authenticate": "Bearer"})
