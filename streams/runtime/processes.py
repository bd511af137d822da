"""The default topology on one machine: N worker processes and one sink process.

``make run`` (``touchpoints demo``) and ``make bench`` start ``touchpoints worker``
processes (``SINK_ENABLED=false``: a worker never opens ClickHouse) that share the
partitions through their consumer group, next to one process that owns ClickHouse
(``touchpoints sink``, or the demo process itself). ``Spawned`` is one such child
process: its environment is the parent's ``Settings`` (the only configuration), its
CPU time and memory come from the kernel's own accounting (``/proc/<pid>/stat`` and
``/proc/<pid>/status``), so they are exact on a machine shared with other work.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from streams.settings import Settings

__all__ = ["Spawned", "free_port", "metric_sum", "settings_env", "wait_until"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The child's environment: every ``Settings`` field as its variable, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CLICKHOUSE_"))}
    for name, value in settings.model_dump().items():
        if value is None:
            env[name.upper()] = ""
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[name.upper()] = str(value)
    env.update(overrides)
    return env


def _end_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux), so a crashed
    demo or bench leaves no worker behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Spawned:
    """One ``touchpoints <command>`` child process with its own HTTP port and log file."""

    def __init__(
        self, name: str, command: str, settings: Settings, log_dir: Path, **env: str
    ) -> None:
        self.name = name
        self.command = command
        self.port = free_port()
        self.env = settings_env(
            settings, WEB_HOST="127.0.0.1", WEB_PORT=str(self.port), LOG_FORMAT="text", **env
        )
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Spawned:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", self.command],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_end_with_parent,  # noqa: PLW1509 - only prctl, before exec
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str) -> tuple[int, str]:
        """HTTP GET on the child's web port: (status, body); (0, "") if it does not answer."""
        try:
            url = f"http://127.0.0.1:{self.port}{path}"
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), ""
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, ""

    def ready(self) -> bool:
        return self.alive and self.get("/readyz")[0] == 200

    def metrics(self) -> str:
        return self.get("/metrics")[1]

    def cpu_seconds(self) -> float:
        """User + system CPU of the process (all its threads), from the kernel."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def rss_mb(self, peak: bool = False) -> float:
        """Resident memory now (``VmRSS``) or its peak (``VmHWM``), MiB."""
        wanted = "VmHWM:" if peak else "VmRSS:"
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(wanted):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a graceful stop: the sink flushes and commits), SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``check()`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus text exposition's samples of ``name`` matching ``labels``."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        found = match.group(1) or ""
        if all(f'{k}="{v}"' in found for k, v in labels.items()):
            total += float(match.group(2))
    return total
