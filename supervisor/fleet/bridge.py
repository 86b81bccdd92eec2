"""A dedicated asyncio event loop on its own thread, called from trio.

Why: nats-py, the maintained NATS client, is written for asyncio, and no trio-native client is
kept up. Rather than run asyncio inside trio's loop (trio-asyncio swaps the event-loop policy for
the whole process and ties the supervisor's loop to a library it does not otherwise need), the
client gets a loop of its own on one thread. Nothing the client does (reconnect back-offs, a
broker that stops answering, a slow parse) can then hold up the trio loop that runs the guests;
the two only meet in :meth:`LoopThread.run`.

How a call crosses: :meth:`LoopThread.run` hands the coroutine to the asyncio loop with
:func:`asyncio.run_coroutine_threadsafe` and parks the calling trio task
(:func:`trio.lowlevel.wait_task_rescheduled`); when the coroutine ends, its future's callback (on
the asyncio thread) asks trio to reschedule the task through its :class:`trio.lowlevel.TrioToken`
with the coroutine's outcome. A trio cancellation cancels the asyncio task and raises
:class:`trio.Cancelled` in the caller at once; the asyncio side finishes its own clean-up in the
background. No polling, no thread per call, and results and exceptions come back as they were.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import attrs
import outcome
import trio

T = TypeVar("T")
P = ParamSpec("P")
_log = logging.getLogger("vsv.fleet")

#: how long closing waits for the asyncio side to finish its tasks
CLOSE_TIMEOUT = 5.0


@attrs.define(eq=False)
class LoopThread:
    """An asyncio loop running on its own thread; make one with :func:`open_loop_thread`."""

    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    calls: int = 0

    async def run(
        self, afn: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``afn(*args, **kwargs)`` on the asyncio loop and return (or raise) its outcome.

        Cancellable: a trio cancellation cancels the asyncio task and raises at once.
        """
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()
        raise_cancel: list[Callable[[], object]] = []
        self.calls += 1
        future = asyncio.run_coroutine_threadsafe(afn(*args, **kwargs), self.loop)

        def resume(done: concurrent.futures.Future[T]) -> None:
            # in the trio thread
            if raise_cancel and done.cancelled():
                trio.lowlevel.reschedule(task, outcome.capture(raise_cancel[0]))
            else:
                trio.lowlevel.reschedule(task, outcome.capture(done.result))

        def wake(done: concurrent.futures.Future[T]) -> None:
            # on the asyncio thread, or in the trio thread when the abort below cancels
            try:
                token.run_sync_soon(resume, done)
            except trio.RunFinishedError:
                pass

        def abort(cancel: Callable[[], object]) -> trio.lowlevel.Abort:
            raise_cancel.append(cancel)
            future.cancel()
            return trio.lowlevel.Abort.FAILED

        future.add_done_callback(wake)
        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` on the asyncio thread soon, without waiting (it must not raise)."""
        self.loop.call_soon_threadsafe(fn)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The thread's body: run the loop until stopped, then end what is left on it."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        pending = asyncio.all_tasks(loop)
        for pending_task in pending:
            pending_task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    except Exception:
        _log.exception("the asyncio loop thread failed")
    finally:
        loop.close()


@contextlib.asynccontextmanager
async def open_loop_thread(name: str = "vsv-asyncio") -> AsyncIterator[LoopThread]:
    """A :class:`LoopThread` for the duration of the block.

    On leaving, shielded and bounded (:data:`CLOSE_TIMEOUT`): the loop is stopped, the tasks
    left on it are cancelled and awaited there, and the thread is joined. A thread that does not
    end in time is left behind as a daemon thread (it cannot keep the process alive) and logged.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=_serve, args=(loop,), name=name, daemon=True)
    thread.start()
    bridge = LoopThread(loop=loop, thread=thread)
    try:
        yield bridge
    finally:
        with trio.CancelScope(shield=True):
            loop.call_soon_threadsafe(loop.stop)
            with trio.move_on_after(CLOSE_TIMEOUT):
                await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)
            if thread.is_alive():
                _log.warning("the asyncio loop thread %s did not end in %s s", name, CLOSE_TIMEOUT)
