"""``kill -USR1 <pid>``: every asyncio task's stack and every thread's, to the log.

A worker whose partitions stop moving while its threads sit idle is waiting on a future
that will never complete -- a thread dump (``py-spy dump``) shows only ``select``. The
stacks of the tasks show what each one awaits. Installed on the main loop by the
composition root; the Faust consumer thread's loop is dumped too when it exists.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable

__all__ = ["install_stack_dump", "stack_dump"]

log = logging.getLogger(__name__)


def _task_lines(loop: asyncio.AbstractEventLoop, title: str) -> list[str]:
    lines = []
    try:
        tasks = list(asyncio.all_tasks(loop))
    except RuntimeError:  # the set changed while we read it (another thread's loop): skip
        return [f"== {title}: tasks changed while read"]
    lines.append(f"== {title}: {len(tasks)} task(s)")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out = io.StringIO()
        task.print_stack(limit=12, file=out)
        lines.append(out.getvalue().rstrip())
    return lines


def stack_dump(extra_loops: Iterable[tuple[str, asyncio.AbstractEventLoop]] = ()) -> str:
    """The text of a dump: tasks of the running loop and of ``extra_loops``, then threads."""
    lines = _task_lines(asyncio.get_running_loop(), "main loop")
    for title, loop in extra_loops:
        lines.extend(_task_lines(loop, title))
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        lines.append(f"== thread {names.get(ident, ident)}")
        lines.append("".join(traceback.format_stack(frame, limit=12)).rstrip())
    return "\n".join(lines)


def install_stack_dump(
    extra_loops: Callable[[], Iterable[tuple[str, asyncio.AbstractEventLoop]]] = tuple,
) -> bool:
    """Log ``stack_dump()`` at WARNING on SIGUSR1 (main thread, Unix only); False if not."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "SIGUSR1"
    ):
        return False
    loop = asyncio.get_running_loop()

    def dump() -> None:
        log.warning("stack dump (SIGUSR1):\n%s", stack_dump(extra_loops()))

    loop.add_signal_handler(signal.SIGUSR1, dump)
    return True
