"""Direct routes: the score operations served without FastAPI's routing and dependency solving.

FastAPI matches a request through every included router (each one matching twice), solves the
route's dependencies and runs it inside two exit stacks; for a 1-sample score that machinery
cost more event-loop time than parsing, queueing and answering together (docs/performance.md).
``DirectRoutes`` is pure ASGI middleware, innermost in the app's stack: a request whose method
and path match one of its routes (the FastAPI ``APIRoute`` objects that document them, so the
path patterns are the same) is answered by ``guard(request)`` and then
``endpoint(**path_params, request=request)``, with the service's errors answered exactly as the
app's exception handlers answer them. Everything else goes on to FastAPI.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.errors import known_error

Guard = Callable[[Request], Awaitable[None]]


class DirectRoutes:
    """Serve ``routes`` (POST ``APIRoute``s whose endpoints return a ``Response``) directly."""

    def __init__(self, app: ASGIApp, *, routes: Sequence[APIRoute], guard: Guard) -> None:
        self.app = app
        self.guard = guard
        self.routes: list[tuple[re.Pattern[str], APIRoute]] = [
            (route.path_regex, route) for route in routes
        ]
        if any(route.methods != {"POST"} for route in routes):
            raise ValueError("direct routes are POST operations")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for pattern, route in self.routes:
                match = pattern.match(path)
                if match is not None:
                    await self._serve(route, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, route: APIRoute, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        scope["route"], scope["path_params"] = route, params
        request = Request(scope, receive, send)
        try:
            await self.guard(request)
            response = await route.endpoint(**params, request=request)
        except Exception as err:
            known = known_error(scope["path"], err)
            if known is None:
                raise
            response = known
        await response(scope, receive, send)
