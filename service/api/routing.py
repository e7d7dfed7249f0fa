"""What every protocol adapter shares: the app's state and data plane, the API-key guard, direct
routes, JSON answers, and the OpenAPI error examples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from service.api.decode import JSON_MEDIA_TYPE
from service.dataplane import DataPlane
from service.http.security import KEY_SCHEMES, check_api_key
from service.runtime.models import ServiceState


async def get_state(request: Request) -> ServiceState:
    """The app's ``ServiceState`` (``async``: FastAPI runs ``def`` dependencies in threads)."""
    return request.app.state.service


def get_dataplane(request: Request) -> DataPlane:
    """The app's ``DataPlane``."""
    return request.app.state.dataplane


State = Annotated[ServiceState, Depends(get_state)]


async def require_api_key(request: Request) -> None:
    """401 unless the request carries a configured API key (no keys configured: open); the
    check is ``check_api_key``'s constant-time comparison."""
    check_api_key(request, (await get_state(request)).api_keys)


KEY_REQUIRED: list[dict[str, list[str]]] = [{scheme.scheme_name: []} for scheme in KEY_SCHEMES]
"""An operation's OpenAPI ``security``: any one of the key schemes."""


class GuardedRouter(APIRouter):
    """An ``APIRouter`` whose every operation requires an API key (``require_api_key``, before
    the router's own ``dependencies``) and declares the key schemes as its OpenAPI security.

    The schemes are declared through each operation's ``openapi_extra``, not as FastAPI
    ``Security`` dependencies: those are solved on every request. Operations registered with
    ``direct`` (the score operations) are also listed in ``direct_routes``: the app serves them
    through ``service.http.direct.DirectRoutes``, which runs the API-key check and then the
    endpoint with the request alone, without FastAPI's routing and dependency solving
    (docs/performance.md); their FastAPI route documents them and answers other methods (405).
    """

    def __init__(self, *, dependencies: Sequence[Any] = (), **kwargs: Any) -> None:
        super().__init__(dependencies=[Depends(require_api_key), *dependencies], **kwargs)
        self.direct_routes: list[APIRoute] = []

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        extra = {"security": KEY_REQUIRED, **(kwargs.pop("openapi_extra", None) or {})}
        super().add_api_route(path, endpoint, openapi_extra=extra, **kwargs)

    def direct(self, path: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        """``@router.direct(path, ...)``: a POST operation served as a direct route. The endpoint
        takes the path parameters and ``request`` and returns a ``Response``."""

        def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
            self.add_api_route(path, endpoint, methods=["POST"], **kwargs)
            route = self.routes[-1]
            assert isinstance(route, APIRoute)
            self.direct_routes.append(route)
            return endpoint

        return register


def json_response(content: Any, status_code: int = 200) -> Response:
    """``content`` (plain Python values, finite floats) as JSON, encoded by orjson: the same
    values as ``JSONResponse``'s ``json.dumps``, 20-40 times faster on score results."""
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON_MEDIA_TYPE)


def error_examples(key: str, texts: Sequence[tuple[int, str]]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of the errors ``texts`` (status, example text), as ``{key: text}``."""
    return {
        status: {"description": text, "content": {JSON_MEDIA_TYPE: {"example": {key: text}}}}
        for status, text in texts
    }


NOT_READY = "not ready: 0 of 1 models loaded and warmed up"
"""The example of a 503 from the readiness probes."""
ERROR_TEXTS: tuple[tuple[int, str], ...] = (
    (401, "API key not accepted (header 'Authorization' or 'X-API-Key')"),
    (404, "model 'x': not in the repository (models: digits-mlp)"),
    (413, "body: more than the limit of 16777216 bytes"),
    (422, "inputs: expected shape (B, 64), got (1, 63)"),
    (
        503,
        "model digits-mlp: overloaded, 4096 of 4096 queued samples (SNNL_MAX_QUEUE); retry later",
    ),
)
"""Examples of the errors every model operation may answer (v1 and v2 add their 400s)."""
