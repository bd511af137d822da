"""Issue 3 acceptance: identity resolution with two worker processes, one of them SIGKILLed.

Two ``touchpoints worker`` processes (``SINK_ENABLED=false``) share the consumer group and
the 8-partition topics; the ClickHouse sink runs in this test process, which therefore owns
the embedded engine and can query it. Generated journeys of ~150 people (cookies that log in
later, apps, phones, emails in odd spellings...) are produced in two halves, in event-time
order; while the first half is being processed one worker is killed with SIGKILL and a
replacement with the same settings is started. When the pipeline is quiescent:

* ``identity_map_v`` (identifier -> customer) is, as a partition of the identifiers, exactly
  the offline union-find components of the same normalised records, with guard rules that
  cannot fire for this traffic (checked: no refusal was written);
* ``customer_touchpoints_v`` holds every event exactly once, with the customer of its anchor
  identifier, and every identifier of the event belongs to that customer: timelines are
  complete, including the events ingested before the merge that joined them to their person.

The process/sink/quiescence harness is ``tests/integration/harness.py``.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.identity.graph import IdentityRules, event_identifiers, offline_components
from streams.ingest.stage import anchor_key
from streams.settings import Settings
from streams.sim.generator import produce
from tests.integration.harness import (
    KILL_POINT_TIMEOUT,
    QUIESCE_TIMEOUT,
    STOP_TIMEOUT,
    WorkerProcess,
    generated_traffic,
    log_tails,
    observers,
    permissive_rules_yaml,
    wait_quiescent,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- the test

CUSTOMERS = 150
SEED = 20261123
FIRST_HALF_RATE = 150.0  # events/s: the first half is still flowing when the worker dies


def _partition_report(
    expected: list[frozenset[str]], mapping: dict[str, str], limit: int = 8
) -> list[str]:
    """How the identity map differs from the expected components (empty: it does not)."""
    problems: list[str] = []
    expected_ids = set().union(*expected) if expected else set()
    missing = sorted(expected_ids - set(mapping))
    extra = sorted(set(mapping) - expected_ids)
    if missing:
        problems.append(f"{len(missing)} identifiers not in identity_map_v, e.g. {missing[:limit]}")
    if extra:
        problems.append(f"{len(extra)} identifiers nobody sent, e.g. {extra[:limit]}")
    members: dict[str, set[str]] = defaultdict(set)
    for identifier, customer in mapping.items():
        members[customer].add(identifier)
    split = [c for c in expected if len({mapping.get(i) for i in c if i in mapping}) > 1]
    if split:
        examples = [
            {
                cust: sorted(i for i in comp if mapping.get(i) == cust)
                for cust in {mapping.get(i) for i in comp}
            }
            for comp in split[:3]
        ]
        problems.append(
            f"{len(split)} offline components split over several customers, e.g. {examples}"
        )
    component_of = {i: n for n, comp in enumerate(expected) for i in comp}
    glued = [
        (cust, ids) for cust, ids in members.items() if len({component_of.get(i) for i in ids}) > 1
    ]
    if glued:
        problems.append(
            f"{len(glued)} customers glue several offline components, e.g. "
            f"{[(c, sorted(ids)[:6]) for c, ids in glued[:3]]}"
        )
    actual = sorted((frozenset(ids) for ids in members.values()), key=min)
    if not problems and actual != expected:
        problems.append("the partitions differ (no single difference isolated)")
    return problems


def test_identity_across_two_workers_with_one_killed_matches_offline_components(
    settings: Settings, tmp_path: Path
) -> None:
    rules_path = permissive_rules_yaml(tmp_path / "identity-rules.yaml")
    s = settings.model_copy(
        update={
            "topic_partitions": 8,
            "identity_rules": rules_path,
            "kafka_session_timeout_seconds": 10.0,  # the killed worker leaves the group sooner
        }
    )
    rules = IdentityRules.from_mapping(yaml.safe_load(rules_path.read_text()))
    pairs, by_id = generated_traffic(s, CUSTOMERS, SEED)
    records = list(by_id.values())
    n = len(records)
    half = n // 2

    # The traffic: guards cannot fire (nothing blocked; the permissive limits are far above
    # any component), and links arrive late: second-half events join first-half customers.
    assert not any(rules.is_blocked(k) for r in records for k in event_identifiers(r))
    expected = offline_components(records, rules)
    first_half_components = offline_components(records[:half], rules)
    late_joins = len(first_half_components) - sum(
        1 for c in expected if c & set().union(*first_half_components)
    )
    assert late_joins > 0, "the second half should merge customers of the first half"
    assert any(len(c) > 2 for c in expected)

    workdir = tmp_path / "workers"
    workdir.mkdir()
    a = WorkerProcess("a", s, workdir, tmp_path / "faust-a")
    b = WorkerProcess("b", s, workdir, tmp_path / "faust-b")
    a2 = a.replacement("a2")  # the same settings as a, started after a is killed
    workers = [a, b, a2]
    timings: dict[str, float] = {}
    facts: dict[str, Any] = {}
    t0 = time.monotonic()

    async def scenario() -> None:
        async with observers(s) as (sink, probe):
            try:
                a.start()
                b.start()
                await wait_ready([a, b])
                timings["workers_ready"] = time.monotonic() - t0

                first = asyncio.create_task(produce(s, pairs[:half], rate=FIRST_HALF_RATE))
                threshold = max(1, half // 4)

                async def partly_processed() -> bool:
                    assert a.alive and b.alive, "a worker died before the planned kill"
                    count = int(await sink.scalar("SELECT count() FROM {db}.touchpoints"))
                    return count >= threshold

                assert await wait_until(partly_processed, KILL_POINT_TIMEOUT), (
                    f"fewer than {threshold} events reached ClickHouse in {KILL_POINT_TIMEOUT}s"
                )
                a.kill()
                facts["landed_at_kill"] = await sink.scalar("SELECT count() FROM {db}.touchpoints")
                facts["produced_before_kill"] = not first.done()
                timings["killed"] = time.monotonic() - t0
                a2.start()
                assert await asyncio.wait_for(first, timeout=60) == half
                assert await asyncio.wait_for(produce(s, pairs[half:]), timeout=60) == n - half
                timings["all_produced"] = time.monotonic() - t0

                quiet = await wait_quiescent(
                    sink,
                    probe,
                    s,
                    expected_events=n,
                    fingerprints={
                        "identity_map": "SELECT count(), groupBitXor(cityHash64(identifier, customer_id))"
                        " FROM {db}.identity_map_v",
                        "timelines": "SELECT count(), groupBitXor(cityHash64(event_id, customer_id))"
                        " FROM {db}.customer_touchpoints_v",
                    },
                    timeout=QUIESCE_TIMEOUT,
                    workers=[b, a2],
                )
                timings["quiescent"] = time.monotonic() - t0
                # Not asserted here: what is missing or doubled is the better report.
                facts["quiet"] = quiet
                if not quiet.reached:  # what the consumers believe, and every task's stack
                    for w in (b, a2):
                        url = f"http://127.0.0.1:{w.port}/debug/consumer"
                        try:
                            with urllib.request.urlopen(url, timeout=5) as response:
                                print(f"worker {w.name} {url}: {response.read().decode()}")
                        except (urllib.error.URLError, OSError) as exc:
                            print(f"worker {w.name} {url}: {exc!r}")
                        if w.alive and w.proc is not None:
                            w.proc.send_signal(signal.SIGUSR1)  # mode's task dump into the log
                    await asyncio.sleep(3)

                facts["identity_map"] = await sink.rows(
                    "SELECT identifier, customer_id FROM {db}.identity_map_v"
                )
                facts["timeline"] = await sink.rows(
                    "SELECT event_id, customer_id, identity_key, customer_id_at_ingest"
                    " FROM {db}.customer_touchpoints_v"
                )
                facts["touchpoints"] = await sink.rows(
                    "SELECT count(), uniqExact(event_id) FROM {db}.touchpoints_v"
                )
                facts["refusals"] = await sink.rows(
                    "SELECT reason, identifier, evidence FROM {db}.identity_refusals FINAL LIMIT 10"
                )
                facts["merges"] = await sink.scalar(
                    "SELECT count() FROM {db}.customer_merges FINAL"
                )
            finally:
                exits = {}
                for w in (b, a2):
                    exits[w.name] = await asyncio.to_thread(w.terminate)
                facts["exit_codes"] = exits
                timings["workers_stopped"] = time.monotonic() - t0

    try:
        asyncio.run(scenario())
        print(f"timings (s since start): {timings}; events={n}; components={len(expected)}")
        print(f"landed at kill: {facts['landed_at_kill']}/{half}; merges: {facts['merges']}")

        problems: list[str] = []
        if not facts["quiet"].reached:
            problems.append(f"not quiescent after {QUIESCE_TIMEOUT}s: {facts['quiet'].last}")
        mapping = {identifier: customer for identifier, customer in facts["identity_map"]}
        if len(mapping) != len(facts["identity_map"]):
            problems.append("identity_map_v has more than one row for some identifier")
        problems += _partition_report(expected, mapping)
        if facts["refusals"]:
            problems.append(
                f"identity guards fired (they cannot for this traffic): {facts['refusals']}"
            )

        # Timelines: every event once, on the customer of its anchor, with all its identifiers.
        if facts["touchpoints"] != [(n, n)]:
            problems.append(
                f"touchpoints_v (count, distinct ids) = {facts['touchpoints']}, want {(n, n)}"
            )
        timeline = facts["timeline"]
        seen: dict[str, int] = defaultdict(int)
        wrong_customer, wrong_anchor, scattered = [], [], []
        for event_id, customer, identity_key, _ in timeline:
            seen[event_id] += 1
            record = by_id.get(event_id)
            if record is None:
                continue
            anchor = anchor_key(record, rules.is_blocked)
            if identity_key != anchor:
                wrong_anchor.append((event_id, identity_key, anchor))
            if mapping.get(anchor) != customer:
                wrong_customer.append((event_id, customer, mapping.get(anchor)))
            if {mapping.get(k) for k in event_identifiers(record)} != {customer}:
                scattered.append(event_id)
        missing = sorted(set(by_id) - set(seen))
        if missing:
            order = {r["event_id"]: i for i, r in enumerate(records)}
            early = sum(1 for e in missing if order[e] < half)
            print(
                f"missing events: {early} of the first half, {len(missing) - early} of the second"
            )
        doubled = sorted(e for e, c in seen.items() if c > 1)
        unknown = sorted(set(seen) - set(by_id))
        for label, items in (
            ("events missing from customer_touchpoints_v", missing),
            ("events more than once in customer_touchpoints_v", doubled),
            ("events nobody sent in customer_touchpoints_v", unknown),
            ("events whose identity_key is not their anchor", wrong_anchor),
            ("events not on the customer of their anchor", wrong_customer),
            ("events whose identifiers are on other customers", scattered),
        ):
            if items:
                problems.append(f"{len(items)} {label}, e.g. {items[:5]}")
        before_merge = sum(1 for _, customer, _, at_ingest in timeline if customer != at_ingest)
        print(f"events resolved to a customer that was merged away later: {before_merge}")
        if before_merge == 0:
            problems.append("no event was ingested before its merge: the scenario did not test it")

        hung = [name for name, code in facts["exit_codes"].items() if code is None]
        if hung:
            problems.append(f"worker(s) {hung} did not stop within {STOP_TIMEOUT}s of SIGTERM")
        assert not problems, "\n".join(problems)
    except BaseException:
        print(log_tails(workers))
        raise
    finally:
        for w in workers:
            w.ensure_dead()
