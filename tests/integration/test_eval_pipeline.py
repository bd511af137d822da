"""The labelled eval through the real pipeline (streams.sim.eval_pipeline), small: ~20 s.

One run of 500 customers (90 labels, 10 per rule, ~19k events over 45 days of event time)
on the session's broker and embedded ClickHouse, shared by the tests below. What they
assert, and why the thresholds are what they are:

* every event lands (none refused: the 45-day history is inside MAX_EVENT_AGE_SECONDS)
  and the report carries one ``EVAL`` line per detector, then ``overall``;
* the pipeline raises no alert that is not labelled, except the ones the pure detector
  raises too given the same identity information (offline, or judged before a merge
  brought the customer's history) and ``complaint_unresolved``: a complaint whose resolving call-back
  reaches the customer stage *before* it (they come from different source systems, so
  different raw partitions, and the replay compresses 45 days into seconds) used to stay
  open and fire on the deadline tick (2-4 such alerts per run; the detector now keeps the
  latest resolution, and none has been seen since);
* the short-window rules (impossible travel, velocity burst, self-service failure: the
  evidence lies minutes apart, inside one batch) find at least 8 of their 10 labels
  (measured: 10 of 10).

``test_alerts_are_the_labelled_ones_for_most_rules`` is the claim the eval exists for:
overall recall >= 0.85, recall >= 0.75 for at least 7 of the 9 rules, and at most 6
labels lost for reasons other than identity resolution (cause ``order_or_state``; the
rest are identity's: history that only a later merge brings, or that nothing links). It
caught the customer stage reading its table with ``str`` keys while the table held
``bytes`` keys, so every batch started every customer's profile from scratch: measured,
3 runs each, recall 0.58-0.69, 5 rules, 25-34 labels lost; with the fix, recall
0.92-0.96, 8-9 rules >= 0.75, 1-3 labels lost in the pipeline.

These three quality tests were known shortfalls (issue 4) while a customer's events were
judged in arrival order: 1-9 labels lost per run to ``order_or_state``. Judging each batch
in event-time order, impossible travel against event-time neighbours, and a merge judging a
fragment's cold events again brought that to 0-3. CI then caught an ``unusual_hour`` false
alert of the pipeline's own: cold events were judged again against the whole joined
history, events *after* them included (and less a guess at their own session's hours).
Measured at this size, 5 runs each: before, 2-9 ``order_or_state`` misses and false alerts
per run (precision 0.95-1.00); judging against the history before the event in event time
(``hours_before``) and letting events resolved to an absorbed id follow its profile to the
survivor (``moved|`` redirects), 0-1 of them besides ``complaint_unresolved`` (recall
0.98-1.00, precision 0.99-1.00).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.customers.detect import RULE_NAMES
from streams.runtime.runner import run_bounded
from streams.settings import Settings
from streams.sim.eval_data import labelled_stream
from streams.sim.eval_identity import resolve_offline, score_identity
from streams.sim.eval_pipeline import run_eval
from streams.sim.generator import TRAP_NAMES

pytestmark = pytest.mark.integration

CUSTOMERS = 500
SEED = 7
SHORT_WINDOW_RULES = ("impossible_travel", "velocity_burst", "self_service_failed")


@pytest.fixture(scope="module")
def evaluated(
    kafka_bootstrap: str, chdb_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], str]]:
    run = uuid.uuid4().hex[:10]
    settings = Settings(
        app_id=f"tp-{run}",
        topic_prefix=f"t{run}.",
        kafka_bootstrap_servers=kafka_bootstrap,
        clickhouse_chdb_path=chdb_path,
        clickhouse_database=f"test_{run}",
        data_dir=tmp_path_factory.mktemp("eval") / "faust",
        web_port=0,
        topic_partitions=4,
        sink_flush_seconds=0.3,
        ingest_batch_seconds=0.1,
    )
    yield run_bounded(run_eval(settings, customers=CUSTOMERS, seed=SEED, timeout=90.0))


def test_every_event_lands_and_the_report_has_a_line_per_detector(
    evaluated: tuple[dict[str, Any], str],
) -> None:
    metrics, report = evaluated
    run = metrics["run"]
    assert run["settled"], run["behind"]
    assert run["landed"] == metrics["events"] > 15_000
    assert run["dead_letters"] == {}
    assert run["events_missing"] == 0
    assert metrics["labels"] == 10 * len(RULE_NAMES)

    number = r"\d+\.\d{3}"
    lines = report.splitlines()
    for prefix, first in (("EVAL", 0), ("OFFLINE", len(RULE_NAMES) + 1)):
        for i, rule in enumerate([*RULE_NAMES, "overall"]):
            assert re.fullmatch(
                rf"{prefix} {rule} precision={number} recall={number} false_per_10k=\d+\.\d\d",
                lines[first + i],
            ), lines[first + i]
    assert lines[-1].startswith(f"RUN customers={CUSTOMERS} seed={SEED} ")
    # The labelled stream itself is sound: the pure detector finds (nearly) every label.
    assert metrics["offline"]["overall"]["recall"] >= 0.95


def test_no_unlabelled_alerts_but_complaints_closed_out_of_order(
    evaluated: tuple[dict[str, Any], str],
) -> None:
    metrics, _ = evaluated
    # Every false alert must be one the pure detector raises too, given the same identity
    # information (its own false positive, or judged before a merge brought the history:
    # ``merged_too_late``); only the pipeline's own order/state may not cause any, except
    # for the complaint call-backs described above.
    unexplained = {
        rule_cause: n
        for rule_cause, n in metrics["false_by_cause"].items()
        if rule_cause.endswith(":order_or_state")
        and not rule_cause.startswith("complaint_unresolved:")
    }
    assert unexplained == {}, metrics["false_alerts"]


def test_short_window_rules_find_their_labels(evaluated: tuple[dict[str, Any], str]) -> None:
    metrics, _ = evaluated
    found = {rule: metrics["pipeline"][rule]["detected"] for rule in SHORT_WINDOW_RULES}
    assert all(n >= 8 for n in found.values()), found


def test_alerts_are_the_labelled_ones_for_most_rules(
    evaluated: tuple[dict[str, Any], str],
) -> None:
    metrics, _ = evaluated
    by_cause = metrics["missed_by_cause"]
    lost_in_pipeline = sum(n for k, n in by_cause.items() if k.endswith(":order_or_state"))
    recall = {rule: metrics["pipeline"][rule]["recall"] for rule in RULE_NAMES}
    assert metrics["pipeline"]["overall"]["recall"] >= 0.85, recall
    assert sum(1 for r in recall.values() if r >= 0.75) >= 7, recall
    assert lost_in_pipeline <= 6, by_cause


def test_identity_is_scored_pairwise_like_the_protocol_offline(
    evaluated: tuple[dict[str, Any], str],
) -> None:
    """``EVAL identity`` lines, and the pipeline's grouping scores as the protocol's
    simulator scores the same stream (interleavings differ: a small tolerance)."""
    metrics, report = evaluated
    number = r"\d\.\d{4}"
    lines = [line for line in report.splitlines() if line.startswith("EVAL identity")]
    assert re.match(
        rf"EVAL identity precision={number} recall={number} recall_people={number} ", lines[0]
    ), lines
    traps = {re.match(r"EVAL identity\[(\w+)\]", line).group(1) for line in lines[1:]}  # type: ignore[union-attr]
    assert traps == {*TRAP_NAMES, "none"}, lines
    pipeline = metrics["identity"]["pairwise"]["overall"]
    stream = labelled_stream(CUSTOMERS, seed=SEED, now_ms=metrics["now_ms"])
    offline = score_identity(stream.events, resolve_offline(stream.events)).overall
    assert pipeline["true_pairs"] == offline.true_pairs
    assert abs(pipeline["precision"] - offline.precision) <= 0.01, (pipeline, offline)
    assert abs(pipeline["recall_linkable"] - offline.recall_linkable) <= 0.01, (pipeline, offline)
