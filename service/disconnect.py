"""Give up on a request whose client went away: its samples leave the model's queue.

Once a handler has read its body, the next ASGI ``receive()`` returns only when the client
disconnects. ``unless_disconnected`` awaits the work and that message side by side; if the client
goes first, the work is cancelled (``DynamicBatcher.submit`` then takes its still-queued chunks out
of the queue, so no batch scores samples nobody waits for) and ``ClientGone`` is raised, answered
as 499 (nginx's "client closed request", logged and counted; nobody reads it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from service.errors import ServiceError

T = TypeVar("T")


class ClientGone(ServiceError):
    """The client disconnected before its answer was ready."""

    status = 499


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """The result of ``work``, or ClientGone (``work`` cancelled) if the client leaves first.

    ``work`` starts at once in the calling task (no loop iteration in between, so a model
    swapped by a reload cannot slip between resolving the model and queueing the samples). Call
    only after the body has been read: the watcher consumes the next ASGI message.
    """
    current = asyncio.current_task()
    assert current is not None
    state = {"finished": False, "gone": False}

    def cancel_if_gone(watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled() and not state["finished"]:
            state["gone"] = True
            current.cancel()

    watcher = asyncio.ensure_future(_disconnect(request))
    watcher.add_done_callback(cancel_if_gone)
    try:
        return await work
    except asyncio.CancelledError:
        if not state["gone"]:
            raise
        current.uncancel()
        raise ClientGone("client disconnected before the answer was ready") from None
    finally:
        state["finished"] = True
        watcher.cancel()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
