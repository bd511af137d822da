"""``touchpoints``: the one command line of the pipeline.

Every subcommand reads the same ``Settings`` from the environment (see README).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import click

from streams.settings import Settings

__all__ = ["main"]


def _settings() -> Settings:
    return Settings()


def _logging(settings: Settings, level: str | None = None) -> None:
    from streams.logs import configure

    configure(
        level or settings.log_level,
        json_format=settings.log_format == "json",
        pii=settings.log_pii,
        repeat_limit=settings.log_repeat_limit,
        repeat_window_s=settings.log_repeat_window_seconds,
    )


def _logging_dict(settings: Settings) -> dict[str, object]:
    from streams.logs import logging_dict

    return logging_dict(
        settings.log_level,
        json_format=settings.log_format == "json",
        pii=settings.log_pii,
        repeat_limit=settings.log_repeat_limit,
        repeat_window_s=settings.log_repeat_window_seconds,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Streaming customer-touchpoint pipeline: Kafka -> Faust -> ClickHouse.

    Configuration comes from environment variables (KAFKA_BOOTSTRAP_SERVERS,
    CLICKHOUSE_URL, ...); see the README's settings table.
    """


@main.command()
def worker() -> None:
    """Run a pipeline worker (agents, tables, HTTP /metrics /healthz /readyz); the
    ClickHouse sink runs apart (`touchpoints sink`) unless SINK_ENABLED=true."""
    import faust

    from streams.runtime.app import Pipeline
    from streams.runtime.runner import prepare

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    prepare(settings)
    pipeline = Pipeline(settings)
    deadline = settings.shutdown_timeout_seconds

    class Worker(faust.Worker):
        def _schedule_shutdown(self, signal: Any) -> None:
            _exit_after(deadline)
            super()._schedule_shutdown(signal)

    Worker(
        pipeline.app, loglevel=settings.log_level.lower(), logging_config=_logging_dict(settings)
    ).execute_from_commandline()


def _exit_after(seconds: float) -> None:
    """A graceful stop that takes longer than ``seconds`` ends the process anyway.

    Faust's stop can hang (measured here: in its producer flush, after a rebalance); every
    stage is idempotent and commits only what it finished, so the next owner of the
    partitions replays the rest. Better than being SIGKILLed by Kubernetes at the end of
    ``terminationGracePeriodSeconds`` with no log line saying why.
    """
    import logging
    import os
    import threading

    def expire() -> None:
        logging.getLogger("streams.cli").error(
            "graceful stop still running after %.0fs: exiting; the partitions' next owner "
            "replays what was in flight",
            seconds,
        )
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


@main.command()
def sink() -> None:
    """Run the ClickHouse sink: the one process that owns ClickHouse (default topology:
    workers with SINK_ENABLED=false + this). Serves /customers/{id}/timeline, /timeline,
    /metrics, /healthz, /readyz on WEB_PORT."""
    from mode import Worker

    from streams.runtime.sink_app import SinkProcess

    settings = _settings()
    Worker(
        SinkProcess(settings),
        loglevel=settings.log_level.lower(),
        logging_config=_logging_dict(settings),
    ).execute_from_commandline()


@main.group()
def dlq() -> None:
    """Dead letters: inspect and replay."""


@dlq.command("show")
@click.option("--limit", default=20, show_default=True)
def dlq_show(limit: int) -> None:
    """Print the newest dead letters with their reasons (reads the dead-letter topic)."""
    from streams.ops.dlq_tools import show_dead_letters

    for line in asyncio.run(show_dead_letters(_settings(), limit=limit)):
        click.echo(line)


@dlq.command("replay")
@click.option("--reason", multiple=True, help="Only these reasons (repeatable).")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; send nothing.")
def dlq_replay(reason: tuple[str, ...], dry_run: bool) -> None:
    """Re-send dead letters, byte for byte, to the raw topic they came from (after a fix).

    Uses its own consumer group, so each dead letter is replayed once.
    """
    from streams.ops.dlq_tools import replay_dead_letters

    sent, skipped = asyncio.run(
        replay_dead_letters(_settings(), reasons=set(reason), dry_run=dry_run)
    )
    verb = "would replay" if dry_run else "replayed"
    click.echo(f"{verb} {sent} dead letters ({skipped} skipped by reason filter)")


def _identifier_options(fun: Any) -> Any:
    for kind in ("loyalty-id", "social-handle", "device-id", "login-id", "phone", "email"):
        fun = click.option(f"--{kind}", help=f"Look up by {kind.replace('-', ' ')}.")(fun)
    fun = click.option("--anonymous-id", help="Look up by cookie / anonymous id.")(fun)
    return click.option("--customer", help="Customer id (c...).")(fun)


def _identifier_from(options: dict[str, Any]) -> str | None:
    from streams.ops.operator import identifier_key

    for name, value in options.items():
        if value and name != "customer":
            return identifier_key(name, value)
    return None


@main.command()
@_identifier_options
@click.option("--limit", default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def timeline(limit: int, as_json: bool, **options: Any) -> None:
    """Print a customer's cross-channel timeline (by customer id or any identifier).

    Reads ClickHouse: a server (CLICKHOUSE_URL) or the embedded database when no worker
    holds it (the worker serves the same at GET /customers/{id}/timeline).
    """
    import orjson

    from streams.adapters.clickhouse import connect
    from streams.ops.operator import find_customer
    from streams.ops.operator import timeline as read_timeline

    settings = _settings()
    client = connect(settings)
    customer = options.get("customer")
    identifier = _identifier_from(options)
    if not customer and identifier:
        customer = find_customer(client, settings.clickhouse_database, identifier)
        if customer is None:
            raise click.ClickException(f"no customer has {identifier}")
    if not customer:
        raise click.UsageError("give --customer or one identifier option")
    rows = read_timeline(client, settings.clickhouse_database, customer, limit)
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(row).decode())
        return
    from streams.identity.graph import is_household

    channels = sorted({r["channel"] for r in rows})
    kind = "household (a shared device or email: no one person)" if is_household(customer) else ""
    click.secho(
        f"customer {customer}: {len(rows)} touchpoints, {', '.join(channels)}"
        + (f"; {kind}" if kind else ""),
        bold=True,
    )
    for r in rows:
        extra = f" {r['amount']:.2f} {r['currency']}" if r["amount"] is not None else ""
        click.echo(
            f"{r['occurred_at'][:19]}  {r['channel']:<15} {r['event_type']:<18}"
            f" via {r['identity_key']}{extra}"
        )


@main.command()
@_identifier_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def erase(yes: bool, **options: Any) -> None:
    """Erase a customer (GDPR): identity graph, state, ClickHouse rows.

    Identifiers of an erased customer are tombstoned: later events carrying them do not
    bring the old data back.
    """
    from streams.ops.operator import erase_op, request

    customer = options.get("customer")
    identifier = _identifier_from(options)
    if not customer and not identifier:
        raise click.UsageError("give --customer or one identifier option")
    target = customer or identifier
    if not yes:
        click.confirm(f"Erase everything of {target}?", abort=True)
    request_id = asyncio.run(request(_settings(), erase_op(customer, identifier)))
    click.echo(f"erasure requested for {target} (request {request_id})")


@main.command()
@click.argument("identifier")
@click.option("--quarantine", is_flag=True, help="Also stop it linking (shared device, kiosk).")
def split(identifier: str, quarantine: bool) -> None:
    """Move IDENTIFIER (kind:value) off its customer onto a new one (undo a wrong merge)."""
    from streams.ops.operator import identifier_key, request, split_op

    kind, _, value = identifier.partition(":")
    key = identifier_key(kind, value)
    request_id = asyncio.run(request(_settings(), split_op(key, quarantine)))
    click.echo(f"split requested for {key} (request {request_id})")


@main.group()
def alerts() -> None:
    """Alerts: follow them as they are raised."""


@alerts.command("tail")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest alert kept.")
@click.option("--rule", multiple=True, help="Only these rules (repeatable).")
@click.option("--min-severity", default="info", show_default=True)
def alerts_tail(from_beginning: bool, rule: tuple[str, ...], min_severity: str) -> None:
    """Print alerts as they arrive on the alerts topic (Ctrl-C to stop)."""
    from streams.ops.alerts_tail import tail

    try:
        asyncio.run(tail(_settings(), from_beginning, set(rule), min_severity, click.echo))
    except KeyboardInterrupt:
        pass


@main.command("eval")
@click.option(
    "--customers",
    default=2000,
    show_default=True,
    help="People to simulate: 2 % of them get each rule's labels (40 per rule at 2,000).",
)
@click.option("--seed", default=7, show_default=True)
def eval_(customers: int, seed: int) -> None:
    """Labelled anomalies through the real pipeline: precision/recall per detector (make eval)."""
    from streams.runtime.runner import run_bounded
    from streams.sim.eval_pipeline import run_eval

    settings = _settings()
    _logging(settings, "WARNING")
    timeout = max(150.0, customers * 0.15)  # measured ~0.03 s per customer here
    _, report = run_bounded(run_eval(settings, customers=customers, seed=seed, timeout=timeout))
    click.echo(report)


@main.command()
def topics() -> None:
    """Create the pipeline's topics if missing (idempotent)."""
    from streams.adapters.kafka import create_topics, topic_specs

    settings = _settings()
    created = create_topics(settings)
    for spec in topic_specs(settings):
        state = "created" if spec.name in created else "exists"
        click.echo(f"{spec.name:40} partitions={spec.partitions} {state}")


@main.command()
def topology() -> None:
    """Print the declared topology: stages, consumer groups, tables, topics, sink routes."""
    from streams.topology import render

    click.echo(render())


@main.command()
def migrate() -> None:
    """Apply ClickHouse migrations (idempotent). With the embedded engine, stop workers first."""
    from streams.adapters.clickhouse import connect
    from streams.adapters.clickhouse import migrate as run_migrations

    settings = _settings()
    client = connect(settings)
    applied = run_migrations(client, settings.clickhouse_database)
    click.echo(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


@main.command()
@click.option("--customers", default=1000, show_default=True, help="People to simulate.")
@click.option("--rate", type=float, default=None, help="Events per second (default: max).")
@click.option("--seed", default=7, show_default=True)
@click.option("--old-schema-fraction", default=0.05, show_default=True)
def generate(customers: int, rate: float | None, seed: int, old_schema_fraction: float) -> None:
    """Produce realistic multi-channel journeys into the raw topic.

    With SCHEMA_REGISTRY_URL, encodes with confluent-kafka's AvroSerializer (auto-registering
    the schema versions, writing the registry's ids) as a real producer would.
    """
    from streams.sim.generator import encode_events, produce
    from streams.sim.generator import generate as make_events
    from streams.wire.codec import TOUCHPOINT_SUBJECT, AvroCodec, Encoder, SchemaRegistry

    settings = _settings()
    local = SchemaRegistry.from_dir(settings.schemas_dir)
    codec: Encoder = AvroCodec(local, TOUCHPOINT_SUBJECT)
    if settings.schema_registry_url:  # as a real producer: AvroSerializer, registry ids
        from streams.adapters.schema_registry import ConfluentEncoder, RemoteSchemas

        codec = ConfluentEncoder(RemoteSchemas.from_settings(settings, local))
    events = make_events(customers, seed=seed, now_ms=int(time.time() * 1000))
    pairs = encode_events(events, codec, old_schema_fraction=old_schema_fraction, seed=seed)
    with click.progressbar(length=len(pairs), label="producing") as bar:
        last = [0]

        def progress(n: int) -> None:
            bar.update(n - last[0])
            last[0] = n

        sent = asyncio.run(produce(settings, pairs, rate=rate, progress=progress))
    click.echo(f"produced {sent} events for {customers} customers to {settings.topics.raw}")


@main.group()
def schemas() -> None:
    """Our Avro schemas (schemas/) against the Schema Registry at SCHEMA_REGISTRY_URL."""


def _remote_schemas() -> Any:
    from streams.adapters.schema_registry import RemoteSchemas
    from streams.wire.codec import SchemaRegistry

    settings = _settings()
    if not settings.schema_registry_url:
        raise click.UsageError("set SCHEMA_REGISTRY_URL (without it, schemas/ is the registry)")
    return RemoteSchemas.from_settings(settings, SchemaRegistry.from_dir(settings.schemas_dir))


@schemas.command("check")
def schemas_check() -> None:
    """Before a deploy: is each of our newest schemas registered, and compatible with what
    its subject holds (SCHEMA_REGISTRY_COMPATIBILITY, BACKWARD by default)? Exit 1 if not."""
    from streams.adapters.schema_registry import PUBLIC_SUBJECTS

    remote = _remote_schemas()
    failed = False
    for ours in PUBLIC_SUBJECTS:
        try:
            report = remote.check(ours)
        except Exception as exc:  # noqa: BLE001 - unreachable, refused credentials, ...
            raise click.ClickException(f"no answer from the schema registry: {exc}") from exc
        head = f"{ours} -> subject {report.subject} ({report.versions} versions, {report.level})"
        if report.registered_id is not None:
            state = f"registered as id {report.registered_id}"
        elif report.versions == 0:
            state = "not registered yet: nothing to be incompatible with"
        elif report.ok:
            state = f"compatible ({remote.compatibility.value}), not registered yet"
        else:
            verdict = {True: "compatible", False: "INCOMPATIBLE", None: "-"}
            state = (
                f"INCOMPATIBLE under {remote.compatibility.value}"
                f" (registry says {verdict[report.registry_compatible]})"
            )
        click.echo(f"{head}: {state}")
        for problem in report.problems:
            click.echo(f"    {problem}")
        failed = failed or not report.ok
    sys.exit(1 if failed else 0)


@schemas.command("register")
def schemas_register() -> None:
    """Register our newest schemas under their subjects, setting SCHEMA_REGISTRY_COMPATIBILITY
    on each (idempotent; the registry refuses an incompatible one: exit 1)."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from streams.adapters.schema_registry import PUBLIC_SUBJECTS
    from streams.wire.codec import SchemaUnavailableError

    remote = _remote_schemas()
    failed = False
    for ours in PUBLIC_SUBJECTS:
        subject = remote.subject(ours)
        try:
            schema_id = remote.register(ours)
        except SchemaRegistryError as exc:
            click.echo(f"{ours} -> subject {subject}: REFUSED: {exc.error_message}")
            failed = True
            continue
        except SchemaUnavailableError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{ours} -> subject {subject}: id {schema_id} ({remote.compatibility.value})")
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--customers", default=500, show_default=True)
@click.option("--rate", type=float, default=None, help="Events per second (default: max).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for the sink.")
@click.option("--workers", default=1, show_default=True, help="Worker processes to start.")
def demo(customers: int, rate: float | None, timeout: float, workers: int) -> None:
    """Set up, run the workers, the sink and the generator, then show what happened
    (make run)."""
    from streams.runtime.runner import run_bounded
    from streams.sim.demo import run_demo

    settings = _settings()
    _logging(settings, "WARNING")
    ok = run_bounded(
        run_demo(settings, customers=customers, rate=rate, timeout=timeout, workers=workers)
    )
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--events", default=200_000, show_default=True)
@click.option(
    "--latency-rate",
    multiple=True,
    type=float,
    default=(5000.0, 1000.0),
    show_default=True,
    help="events/s, steady; repeat for one alert_latency line per rate",
)
@click.option("--latency-seconds", default=10.0, show_default=True)
@click.option(
    "--memory-events",
    default=500_000,
    show_default=True,
    help="events of the memory run (0 = skip it)",
)
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="also run the pre-issue-11 runtime (sink in the worker, default GC) on the same data",
)
@click.option(
    "--pipeline/--no-pipeline",
    default=True,
    show_default=True,
    help="the BENCH pipeline runs of 1 and 2 workers (off: only the other parts, to iterate)",
)
@click.option(
    "--compare",
    multiple=True,
    metavar="VAR=VALUE",
    help="also run one worker with this setting and without it, alternating (BENCH compare)",
)
@click.option(
    "--compare-latency",
    multiple=True,
    metavar="VAR=VALUE",
    help="each alert_latency run as configured and with this worker setting, alternating",
)
@click.option("--rounds", default=2, show_default=True, help="alternations of each --compare")
def bench(
    events: int,
    latency_rate: tuple[float, ...],
    latency_seconds: float,
    memory_events: int,
    baseline: bool,
    pipeline: bool,
    compare: tuple[str, ...],
    compare_latency: tuple[str, ...],
    rounds: int,
) -> None:
    """CPU per event and rate of 1 and 2 workers against a ceiling, alert latency,
    memory over a long run (make bench)."""
    from streams.runtime.runner import run_bounded
    from streams.sim.bench import run_bench

    settings = _settings()
    _logging(settings, "WARNING")
    run_bounded(
        run_bench(
            settings,
            events=events,
            latency_rates=latency_rate,
            latency_seconds=latency_seconds,
            memory_events=memory_events,
            baseline=baseline,
            pipeline=pipeline,
            compare=compare,
            compare_latency=compare_latency,
            rounds=rounds,
        )
    )


if __name__ == "__main__":  # pragma: no cover
    main()
