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

from service.http.errors import ServiceError

T = TypeVar("T")


class ClientGone(ServiceError):
    """The client disconnected before its answer was ready."""

    status = 499


WATCH_AFTER_S = 0.1
"""A request starts watching for its client's disconnect once it has waited this long. Watching
takes a task per request (about a sixth of the event loop's time per 1-sample request,
docs/performance.md), and matters only when requests wait long, behind a full queue: a
request answered sooner never pays for it."""


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """The result of ``work``, or ClientGone (``work`` cancelled) if the client leaves first
    (noticed from ``WATCH_AFTER_S`` on).

    ``work`` starts at once in the calling task (no loop iteration in between, so a model
    swapped by a reload cannot slip between resolving the model and queueing the samples). Call
    only after the body has been read: the watcher consumes the next ASGI message.
    """
    current = asyncio.current_task()
    assert current is not None
    loop = asyncio.get_running_loop()
    finished = gone = False
    watcher: asyncio.Task[None] | None = None

    def cancel_if_gone(done: asyncio.Future[None]) -> None:
        nonlocal gone
        if not done.cancelled() and not finished:
            gone = True
            current.cancel()

    def watch() -> None:
        nonlocal watcher
        watcher = loop.create_task(_disconnect(request))
        watcher.add_done_callback(cancel_if_gone)

    timer = loop.call_later(WATCH_AFTER_S, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        current.uncancel()
        raise ClientGone("client disconnected before the answer was ready") from None
    finally:
        finished = True
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
