"""The few ASGI pieces both of the supervisor's HTTP apps use (the control API in
:mod:`supervisor.api.app` and the Prometheus endpoint in :mod:`supervisor.metrics`): the
callables' types and a lifespan handler. Below the API, so that the metrics module can use them
without importing the API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def lifespan(receive: Receive, send: Send) -> None:
    """ASGI lifespan: acknowledge startup and shutdown (nothing to set up or tear down)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
