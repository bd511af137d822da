"""How the composition root hands its methods to Faust."""

from __future__ import annotations

import inspect

from streams.runtime.app import Pipeline


def test_the_timer_takes_no_parameters() -> None:
    # Faust calls a timer function that takes a parameter with the app as its argument:
    # ``_tick_customers(idle_ms)`` once received the App and crashed the worker on its
    # first tick (caught by the two-worker test, which runs past a minute).
    assert list(inspect.signature(Pipeline._tick_customers).parameters) == ["self"]


def test_no_leader_topic_and_no_timer_runs_on_the_leader_only() -> None:
    from streams.settings import Settings

    pipeline = Pipeline(Settings(web_port=0, sink_enabled=False))
    assert pipeline.app.conf.topic_disable_leader is True
    source = inspect.getsource(Pipeline)
    assert "on_leader=True" not in source
