"""``kill -USR1 <pid>``: every asyncio task's stack and every thread's, to the log.

A worker whose partitions stop moving while its threads sit idle is waiting on a future
that will never complete -- a thread dump (``py-spy dump``) shows only ``select``. The
stacks of the tasks show what each one awaits. Installed on the main loop by the
composition root; the Faust consumer thread's loop is dumped too when it exists.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["install_stack_dump", "stack_dump"]

log = logging.getLogger(__name__)

_PACKAGE = "/streams/"


def _task_lines(loop: asyncio.AbstractEventLoop, title: str) -> list[str]:
    lines = []
    try:
        tasks = list(asyncio.all_tasks(loop))
    except RuntimeError:  # the set changed while we read it (another thread's loop): skip
        return [f"== {title}: tasks changed while read"]
    lines.append(f"== {title}: {len(tasks)} task(s)")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        lines.append(f"-- task {task.get_name()}")
        lines.extend(_await_chain(task.get_coro()))
    return lines


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 240 else text[:237] + "..."


def _our_coroutines() -> list[str]:
    """Every suspended coroutine and async generator of this package, where it stands and
    what it awaits: the chain above stops at wrappers (Faust's agent, ``async for`` over a
    stream) that hide the coroutine inside them."""
    lines = ["== suspended coroutines of streams/"]
    for obj in gc.get_objects():
        if isinstance(obj, types.CoroutineType):
            frame, awaits = obj.cr_frame, obj.cr_await
        elif isinstance(obj, types.AsyncGeneratorType):
            frame, awaits = obj.ag_frame, obj.ag_await
        else:
            continue
        if frame is None or _PACKAGE not in frame.f_code.co_filename:
            continue
        code = frame.f_code
        lines.append(
            f"   {code.co_filename}:{frame.f_lineno} in {code.co_name} awaits {_short(awaits)}"
        )
    return lines


def _await_chain(coro: Any, depth: int = 40) -> list[str]:
    """The frames of a suspended coroutine and of everything it awaits, innermost last,
    then what the innermost one waits on (a future, a task): ``Task.get_stack`` shows only
    the outermost frame of a suspended coroutine."""
    lines = []
    while coro is not None and depth:
        depth -= 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f"   {code.co_filename}:{frame.f_lineno} in {code.co_name}")
        nxt = getattr(coro, "cr_await", None)
        if nxt is None:
            nxt = getattr(coro, "gi_yieldfrom", None)
        if nxt is not None and not (hasattr(nxt, "cr_frame") or hasattr(nxt, "gi_frame")):
            lines.append(f"   awaits {_short(nxt)}")
            break
        coro = nxt
    return lines


def stack_dump(extra_loops: Iterable[tuple[str, asyncio.AbstractEventLoop]] = ()) -> str:
    """The text of a dump: tasks of the running loop and of ``extra_loops``, then threads."""
    lines = _task_lines(asyncio.get_running_loop(), "main loop")
    for title, loop in extra_loops:
        lines.extend(_task_lines(loop, title))
    lines.extend(_our_coroutines())
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        lines.append(f"== thread {names.get(ident, ident)}")
        lines.append("".join(traceback.format_stack(frame, limit=12)).rstrip())
    return "\n".join(lines)


def install_stack_dump(
    extra_loops: Callable[[], Iterable[tuple[str, asyncio.AbstractEventLoop]]] = tuple,
) -> bool:
    """Log ``stack_dump()`` at WARNING on SIGUSR1 (main thread, Unix only); False if not."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        return False
    loop = asyncio.get_running_loop()

    def dump() -> None:
        log.warning("stack dump (SIGUSR1):\n%s", stack_dump(extra_loops()))

    loop.add_signal_handler(signal.SIGUSR1, dump)
    return True
