from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading

import pytest

from streams.runtime.diagnostics import install_stack_dump, stack_dump


async def _waits_for_ever(never: asyncio.Future[None]) -> None:
    await never


def test_a_dump_names_what_each_task_awaits_in_every_loop() -> None:
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()

    async def scenario() -> str:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(_waits_for_ever(never), name="stuck-one")
        other_never = asyncio.run_coroutine_threadsafe(_other_stuck(), other)
        await asyncio.sleep(0.05)
        text = stack_dump([("other loop", other)])
        task.cancel()
        other_never.cancel()
        return text

    try:
        text = asyncio.run(scenario())
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(5)
    assert "== main loop:" in text and "stuck-one" in text and "_waits_for_ever" in text
    assert "== other loop: 1 task(s)" in text and "_other_stuck" in text
    assert "== thread MainThread" in text


async def _other_stuck() -> None:
    await asyncio.Event().wait()


def test_sigusr1_logs_the_dump(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> bool:
        installed = install_stack_dump()
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(_waits_for_ever(never), name="stuck-two")
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(50):
            await asyncio.sleep(0.01)
            if "stack dump" in caplog.text:
                break
        asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
        task.cancel()
        return installed

    with caplog.at_level(logging.WARNING, logger="streams.runtime.diagnostics"):
        assert asyncio.run(scenario())
    assert "stack dump (SIGUSR1)" in caplog.text and "stuck-two" in caplog.text


def test_a_dump_finds_this_packages_coroutines_behind_wrappers() -> None:
    from streams.runtime import diagnostics

    async def scenario() -> str:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(diagnostics_probe(never))
        await asyncio.sleep(0.01)
        text = diagnostics.stack_dump()
        task.cancel()
        return text

    original = diagnostics._PACKAGE
    diagnostics._PACKAGE = "/tests/unit/runtime/"
    try:
        text = asyncio.run(scenario())
    finally:
        diagnostics._PACKAGE = original
    assert "== suspended coroutines of streams/" in text
    assert "test_diagnostics.py" in text and "in diagnostics_probe awaits" in text


async def diagnostics_probe(never: asyncio.Future[None]) -> None:
    await never
