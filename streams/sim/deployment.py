"""The bench's deployments: worker processes and the sink process on fresh topics,
tables and ClickHouse database (``streams.sim.bench``, ``streams.sim.latency``)."""

from __future__ import annotations

import asyncio
import uuid

from streams.runtime.processes import Spawned, metric_sum, wait_until
from streams.settings import Settings

__all__ = ["Deployment", "fresh"]


class Deployment:
    """Worker processes and (by default) one sink process on a fresh deployment.

    ``sink_apart=False, gc_tuned=False`` is the topology and runtime before issue 11:
    one process ran the agents and the sink, with Python's default collector."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        *,
        sink_apart: bool = True,
        gc_tuned: bool = True,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        log_dir = settings.data_dir / "logs"
        env = {} if gc_tuned else {"GC_FREEZE": "false", "GC_THRESHOLD": "0"}
        env.update(worker_env or {})
        self.sink = Spawned("sink", "sink", settings, log_dir, **env) if sink_apart else None
        self.workers = [
            Spawned(
                f"worker-{i}",
                "worker",
                settings,
                log_dir,
                SINK_ENABLED="true" if not sink_apart and i == 0 else "false",
                DATA_DIR=str(settings.data_dir / f"worker-{i}"),
                **env,
            )
            for i in range(workers)
        ]
        self.sink_owner = self.sink or self.workers[0]

    @property
    def processes(self) -> list[Spawned]:
        return [*([self.sink] if self.sink else []), *self.workers]

    async def start(self, timeout: float = 180.0) -> None:
        try:
            await self._start(timeout)
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise

    async def _start(self, timeout: float) -> None:
        for process in self.processes:
            process.start()

        def all_ready() -> bool:
            return all(p.ready() for p in self.processes)

        # Ready twice, a few seconds apart: a later worker's join rebalances the group.
        for _ in range(2):
            if not await asyncio.to_thread(wait_until, all_ready, timeout, 0.5):
                dead = [p for p in self.processes if not p.ready()]
                tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in dead)
                raise RuntimeError(f"not ready: {[p.name for p in dead]}\n{tails}")
            await asyncio.sleep(3.0)

    def customer_events(self) -> float:
        return sum(
            metric_sum(w.metrics(), "touchpoints_customer_stage_events_total") for w in self.workers
        )

    def touchpoint_rows(self) -> float:
        return metric_sum(
            self.sink_owner.metrics(),
            "touchpoints_clickhouse_rows_written_total",
            table="touchpoints",
        )

    def cpu(self) -> dict[str, float]:
        return {p.name: p.cpu_seconds() for p in self.processes}

    def stop(self) -> None:
        for process in self.workers:  # the sink last: it flushes what the workers sent
            process.stop()
        if self.sink is not None:
            self.sink.stop()


def fresh(settings: Settings, tag: str) -> Settings:
    run = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={
            "topic_prefix": f"{tag}{run}.",
            "app_id": f"{tag}-{run}",
            "clickhouse_database": f"{tag}_{run}",
            "aggregate_lateness_seconds": 3 * 3600,
            "data_dir": settings.data_dir / f"{tag}-{run}",
            # Its own embedded database too: the engine's background tasks run for every
            # table it holds, so an earlier run's tables would cost the sink idle CPU.
            "clickhouse_chdb_path": settings.data_dir / f"{tag}-{run}" / "chdb",
        }
    )
