#!/usr/bin/env python3
"""Fetch and run a real, single-node Apache Kafka broker (KRaft) on the local JDK.

No Docker needed: the broker's jars come from Maven Central (``deploy/local/kafka/pom.xml``,
resolved with ``mvn dependency:copy-dependencies``), the storage is formatted for KRaft and one
combined broker+controller node is started with ``java``. Standard library only.

Library use::

    from localkafka import LocalKafka

    with LocalKafka(Path(".local/kafka")) as kafka:   # install() + start() on enter
        bootstrap = kafka.bootstrap                    # "127.0.0.1:<free port>"

Command line::

    python deploy/local/localkafka.py install [--workdir DIR]
    python deploy/local/localkafka.py start [--workdir DIR] [--port N] [--fresh]  # detached
    python deploy/local/localkafka.py status [--workdir DIR]
    python deploy/local/localkafka.py stop [--workdir DIR] [--keep-data]

``stop --keep-data`` keeps the broker's storage (topics, offsets, transactions) and its
ports; the next ``start`` restarts on them, on the same ports, so clients reconnect to the
same bootstrap. ``start --fresh`` wipes kept storage first.
    python deploy/local/localkafka.py run [--workdir DIR] [--port N]  # foreground until Ctrl-C

``--workdir`` defaults to ``$LOCALKAFKA_HOME`` or ``<repo>/.local/kafka``. Jars go to
``<workdir>/libs`` unless ``--libs-dir``/``libs_dir`` says otherwise (so several work dirs can
share one install).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

__all__ = [
    "LocalKafka",
    "LocalKafkaError",
    "DEFAULT_POM",
    "DEFAULT_WORKDIR",
    "find_free_port",
    "probe_broker",
]

HERE = Path(__file__).resolve().parent
DEFAULT_POM = HERE / "kafka" / "pom.xml"
REPO_ROOT = HERE.parent.parent
DEFAULT_WORKDIR = REPO_ROOT / ".local" / "kafka"

INSTALL_HINT = "apt-get install -y openjdk-17-jre-headless maven"
STAMP_NAME = ".localkafka-stamp.json"
STAMP_FORMAT = 1
NODE_ID = 1

# Main classes, in order of preference. Kafka 3.x/4.x: kafka.Kafka and kafka.tools.StorageTool
# (both in kafka_2.13.jar); kept as lists so a future move is a one-line change.
SERVER_MAIN_CANDIDATES = ("kafka.Kafka",)
STORAGE_MAIN_CANDIDATES = ("kafka.tools.StorageTool", "org.apache.kafka.tools.StorageTool")

LOG_ROTATE_BYTES = 64 * 1024 * 1024

# Single-node broker settings. Anything here can be overridden with ``extra_config``.
BASE_CONFIG: dict[str, str] = {
    # Replication / ISR: one node, so everything is 1 (else __consumer_offsets, transactions
    # and exactly-once hang waiting for replicas that never come).
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # Fewer internal partitions than the defaults (50) -> first group join/transaction is quicker.
    "offsets.topic.num.partitions": "8",
    "transaction.state.log.num.partitions": "8",
    # Topics: the project creates its own topics.
    "num.partitions": "8",
    "auto.create.topics.enable": "false",
    "delete.topic.enable": "true",
    # Groups: no 3 s wait before the first rebalance.
    "group.initial.rebalance.delay.ms": "0",
    # Retention: a day of data, 64 MiB segments, compaction on (Faust changelogs are compacted).
    "log.retention.hours": "24",
    "log.retention.check.interval.ms": "60000",
    "log.segment.bytes": str(64 * 1024 * 1024),
    "log.cleaner.enable": "true",
    "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
    "log.cleaner.threads": "1",
    # Small machine (2 cores).
    "num.network.threads": "2",
    "num.io.threads": "4",
    "num.recovery.threads.per.data.dir": "1",
    "background.threads": "4",
    # Fast, non-hanging start/stop on one combined node: controlled shutdown only needs the
    # local controller (measured: SIGTERM -> exit in ~0.3-0.6 s), and quicker broker heartbeats
    # (default 2 s) shorten both the unfencing wait at start and the shutdown handshake.
    "controlled.shutdown.enable": "true",
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "9000",
    "auto.leader.rebalance.enable": "false",
}

LOG4J2_PROPERTIES = """\
# Written by localkafka.py: everything to stdout, which is redirected to broker.log.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = warn
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
logger.appinfo.name = org.apache.kafka.common.utils.AppInfoParser
logger.appinfo.level = warn
"""


class LocalKafkaError(RuntimeError):
    """Anything that stops the local broker from being installed, started or stopped."""


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[localkafka] {msg}", file=sys.stderr, flush=True)


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _random_cluster_id() -> str:
    """Same shape as Kafka's ``Uuid.randomUuid().toString()``: 22 url-safe base64 chars."""
    while True:
        raw = uuid.uuid4().bytes
        text = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        # Kafka avoids ids that start with '-' (they look like CLI flags) and the two reserved
        # ids (all zeros / ...01); uuid4 never produces the latter.
        if not text.startswith("-"):
            return text


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _pid_cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode("utf-8", "replace")
        )
    except OSError:
        return ""


def _rss_bytes(pid: int) -> int | None:
    """Resident set size of a process (Linux), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _java_executable() -> str:
    for var in ("KAFKA_JAVA_HOME", "JAVA_HOME"):
        home = os.environ.get(var)
        if home:
            java = Path(home) / "bin" / "java"
            if java.is_file() and os.access(java, os.X_OK):
                return str(java)
            raise LocalKafkaError(
                f"${var}={home} but {java} is not an executable java. Fix ${var} or unset it "
                f"to use java from PATH (Debian: {INSTALL_HINT})."
            )
    java_on_path = shutil.which("java")
    if not java_on_path:
        raise LocalKafkaError(
            "java not found (needed to run the Kafka broker; Kafka 4.x needs Java 17+). "
            f"Install it: {INSTALL_HINT} -- or set JAVA_HOME / KAFKA_JAVA_HOME."
        )
    return java_on_path


def _mvn_executable() -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        raise LocalKafkaError(
            "mvn (Apache Maven) not found; it is needed once to download the Kafka broker jars "
            f"from Maven Central. Install it: {INSTALL_HINT}"
        )
    return mvn


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (serialises concurrent installs, e.g. pytest-xdist workers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


_PRCTL: Callable[..., int] | None = None


def _load_prctl() -> bool:
    """Resolve libc's prctl in the parent, so the child only has to call it."""
    global _PRCTL
    if _PRCTL is None:
        try:
            _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            return False
    return True


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    """Have the kernel SIGTERM the broker if the Python process that started it dies."""
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG = 1


# ----------------------------------------------------------------------------------------------
# Minimal Kafka wire protocol: ApiVersions + Metadata, enough to prove the broker serves clients
# ----------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("short Kafka response")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int16(self) -> int:
        return int(struct.unpack(">h", self.take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def uvarint(self) -> int:
        shift = result = 0
        while True:
            b = self.take(1)[0]
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def string(self, compact: bool) -> str | None:
        n = self.uvarint() - 1 if compact else self.int16()
        if n < 0:
            return None
        return self.take(n).decode("utf-8", "replace")

    def skip_tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def _request(
    sock: socket.socket, api_key: int, version: int, corr: int, body: bytes, flexible: bool
) -> _Reader:
    client_id = b"localkafka-probe"
    header = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id
    if flexible:
        header += b"\x00"  # request header v2: empty tagged fields
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    reader = _Reader(_recv_exact(sock, size))
    if reader.int32() != corr:
        raise ValueError("correlation id mismatch")
    return reader


def _api_versions(sock: socket.socket) -> dict[int, tuple[int, int]]:
    r = _request(sock, 18, 0, 1, b"", flexible=False)  # ApiVersions v0, header v0 response
    error = r.int16()
    if error not in (0, 35):  # 35 UNSUPPORTED_VERSION still carries the list
        raise ValueError(f"ApiVersions error {error}")
    out: dict[int, tuple[int, int]] = {}
    for _ in range(r.int32()):
        key, lo, hi = r.int16(), r.int16(), r.int16()
        out[key] = (lo, hi)
    return out


def _metadata_brokers(sock: socket.socket, version: int) -> list[tuple[int, str, int]]:
    flexible = version >= 9
    if flexible:
        body = b"\x01"  # topics: empty compact array
        body += b"\x00"  # allow_auto_topic_creation
        if version <= 10:
            body += b"\x00"  # include_cluster_authorized_operations
        body += b"\x00"  # include_topic_authorized_operations
        body += b"\x00"  # tagged fields
    else:
        body = struct.pack(">i", 0)  # topics: empty array (no topic metadata, just brokers)
        if version >= 4:
            body += b"\x00"
        if version >= 8:
            body += b"\x00\x00"
    r = _request(sock, 3, version, 2, body, flexible=flexible)
    if flexible:
        r.skip_tags()  # response header v1
    if version >= 3:
        r.int32()  # throttle_time_ms
    count = r.uvarint() - 1 if flexible else r.int32()
    brokers: list[tuple[int, str, int]] = []
    for _ in range(max(count, 0)):
        node_id = r.int32()
        host = r.string(flexible) or ""
        port = r.int32()
        r.string(flexible)  # rack
        if flexible:
            r.skip_tags()
        brokers.append((node_id, host, port))
    return brokers


def probe_broker(host: str, port: int, timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """Ask a broker for ApiVersions and Metadata; return the live (unfenced) brokers it reports.

    Raises OSError/ValueError if the broker does not answer like Kafka does.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        versions = _api_versions(sock)
        lo, hi = versions.get(3, (0, -1))
        usable = [v for v in range(1, 13) if lo <= v <= hi]
        if not usable:
            raise ValueError(f"broker supports Metadata v{lo}..v{hi}, probe speaks v1..v12")
        return _metadata_brokers(sock, max(usable))


# ----------------------------------------------------------------------------------------------
# The broker
# ----------------------------------------------------------------------------------------------


class LocalKafka:
    """One real Kafka broker (KRaft combined broker+controller) listening on 127.0.0.1.

    ``workdir`` holds ``broker.log`` (JVM stdout/stderr, appended), the data dir
    ``data-<port>/`` (deleted by ``stop()`` unless ``keep_data``: kept storage is recorded in
    ``kept-data.json`` and the next ``start()`` restarts on it, same ports, unless ``fresh``) and,
    unless ``libs_dir`` is given, the jars in ``libs/``. Ports are picked free at start unless
    given. Use one workdir per concurrently running broker (they share ``broker.log``).

    ``extra_config`` overrides/extends the server.properties (see ``BASE_CONFIG``); ``jvm_opts``
    (plus ``$LOCALKAFKA_JVM_OPTS``) are added to the broker's JVM; ``cds`` (default on unless
    ``$LOCALKAFKA_CDS=0``) enables the class-data-sharing archive that halves start-up.
    """

    HOST = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        *,
        libs_dir: Path | None = None,
        pom: Path | None = None,
        extra_config: Mapping[str, str] | None = None,
        jvm_opts: Sequence[str] = (),
        log_level: str = "INFO",
        keep_data: bool = False,
        cds: bool | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.libs_dir = Path(libs_dir).resolve() if libs_dir else self.workdir / "libs"
        self.pom = Path(pom).resolve() if pom else DEFAULT_POM
        self.heap = heap
        self.extra_config: dict[str, str] = dict(extra_config or {})
        self.jvm_opts: list[str] = (
            list(jvm_opts) + os.environ.get("LOCALKAFKA_JVM_OPTS", "").split()
        )
        self.log_level = log_level
        self.keep_data = keep_data
        self._fixed_port = port
        self._fixed_controller_port = controller_port
        self.port: int | None = port
        self.controller_port: int | None = controller_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._data_dir: Path | None = None
        self._atexit_registered = False
        if cds is None:
            cds = os.environ.get("LOCALKAFKA_CDS", "1").strip().lower() not in {"0", "false", "no"}
        self.cds = cds
        self._cds_pending: _CdsDump | None = None
        self._cds_suspect = False
        self._log_offset = 0
        self._reuse: Path | None = None  # kept storage this start restarts on

    # ------------------------------------------------------------------ paths / properties
    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "broker.pid"

    @property
    def kept_path(self) -> Path:
        """Storage kept by ``stop()`` with ``keep_data``: where, and its ports."""
        return self.workdir / "kept-data.json"

    def kept_data(self) -> tuple[Path, int, int] | None:
        """(data dir, port, controller port) of formatted storage a restart can reuse."""
        try:
            kept = json.loads(self.kept_path.read_text())
            data_dir = Path(kept["data_dir"])
            port, cport = int(kept["port"]), int(kept["controller_port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not (data_dir / "metadata" / "meta.properties").is_file():
            return None
        return data_dir, port, cport

    def discard_kept_data(self) -> None:
        kept = self.kept_data()
        if kept is not None:
            shutil.rmtree(kept[0], ignore_errors=True)
        self.kept_path.unlink(missing_ok=True)

    @property
    def bootstrap_path(self) -> Path:
        return self.workdir / "bootstrap"

    @property
    def data_dir(self) -> Path | None:
        return self._data_dir

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>``; only valid once started."""
        if self.port is None or self._pid is None:
            raise LocalKafkaError("broker not started")
        return f"{self.HOST}:{self.port}"

    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and _pid_alive(self._pid)

    def rss_bytes(self) -> int | None:
        return _rss_bytes(self._pid) if self._pid else None

    # ------------------------------------------------------------------ install
    def _stamp(self) -> dict[str, object] | None:
        try:
            data = json.loads((self.libs_dir / STAMP_NAME).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _stamp_valid(self, pom_hash: str) -> dict[str, object] | None:
        stamp = self._stamp()
        if not stamp or stamp.get("format") != STAMP_FORMAT or stamp.get("pom_sha256") != pom_hash:
            return None
        jars = stamp.get("jars")
        if not isinstance(jars, list) or not jars:
            return None
        if not all((self.libs_dir / str(j)).is_file() for j in jars):
            return None
        return stamp

    def install(self, force: bool = False) -> Path:
        """Make sure the broker jars are in ``libs_dir`` (runs mvn only when missing/outdated).

        Idempotent and safe to call from several processes at once. Returns ``libs_dir``.
        """
        if not self.pom.is_file():
            raise LocalKafkaError(f"pom not found: {self.pom}")
        pom_hash = _sha256_file(self.pom)
        if not force and self._stamp_valid(pom_hash):
            return self.libs_dir
        lock = self.libs_dir.parent / f".{self.libs_dir.name}.lock"
        with _file_lock(lock):
            if not force and self._stamp_valid(pom_hash):  # someone else just did it
                return self.libs_dir
            mvn = _mvn_executable()
            staging = self.libs_dir.parent / f".{self.libs_dir.name}.staging-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            cmd = [
                mvn,
                "-B",
                "-q",
                "-Dstyle.color=never",
                "-f",
                str(self.pom),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ]
            _log(f"downloading Kafka broker jars with Maven ({self.pom.name}) -> {self.libs_dir}")
            t0 = time.monotonic()
            res = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.pom.parent,
                check=False,
            )
            if res.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                out = res.stdout.decode("utf-8", "replace")[-4000:]
                raise LocalKafkaError(
                    f"mvn failed (exit {res.returncode}) resolving {self.pom}; is Maven Central "
                    f"reachable?\n{' '.join(cmd)}\n{out}"
                )
            jars = sorted(p.name for p in staging.glob("*.jar"))
            server_main, storage_main, kafka_version = self._detect_main_classes(staging)
            stamp = {
                "format": STAMP_FORMAT,
                "pom_sha256": pom_hash,
                "kafka_version": kafka_version,
                "server_main": server_main,
                "storage_main": storage_main,
                "jars": jars,
                "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (staging / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
            old = self.libs_dir.parent / f".{self.libs_dir.name}.old-{os.getpid()}"
            if self.libs_dir.exists():
                self.libs_dir.rename(old)
            staging.rename(self.libs_dir)
            shutil.rmtree(old, ignore_errors=True)
            took = time.monotonic() - t0
            _log(f"installed Kafka {kafka_version} ({len(jars)} jars) in {took:.1f}s")
        return self.libs_dir

    @staticmethod
    def _detect_main_classes(libs: Path) -> tuple[str, str, str]:
        classes: set[str] = set()
        version = "unknown"
        for jar in sorted(libs.glob("kafka*.jar")):
            with zipfile.ZipFile(jar) as zf:
                for name in zf.namelist():
                    if name.endswith(".class") and "$" not in name:
                        classes.add(name[:-6].replace("/", "."))
            if jar.name.startswith("kafka_2.13-"):
                version = jar.name[len("kafka_2.13-") : -len(".jar")]

        def pick(candidates: Sequence[str], what: str) -> str:
            for c in candidates:
                if c in classes:
                    return c
            raise LocalKafkaError(f"no {what} main class ({', '.join(candidates)}) in {libs}")

        return (
            pick(SERVER_MAIN_CANDIDATES, "broker"),
            pick(STORAGE_MAIN_CANDIDATES, "storage tool"),
            version,
        )

    def _main_classes(self) -> tuple[str, str]:
        stamp = self._stamp() or {}
        server, storage = stamp.get("server_main"), stamp.get("storage_main")
        if isinstance(server, str) and isinstance(storage, str):
            return server, storage
        s, t, _ = self._detect_main_classes(self.libs_dir)
        return s, t

    @property
    def kafka_version(self) -> str | None:
        v = (self._stamp() or {}).get("kafka_version")
        return v if isinstance(v, str) else None

    # ------------------------------------------------------------------ config
    def _server_properties(self, data_dir: Path, port: int, cport: int) -> dict[str, str]:
        host = self.HOST
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": f"{NODE_ID}@{host}:{cport}",
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(data_dir / "logs"),
            "metadata.log.dir": str(data_dir / "metadata"),
        }
        props.update(BASE_CONFIG)
        props.update(self.extra_config)
        return props

    @staticmethod
    def _write_properties(path: Path, props: Mapping[str, str]) -> None:
        def esc(v: str) -> str:
            return v.replace("\\", "\\\\")

        lines = ["# Written by deploy/local/localkafka.py"]
        lines += [f"{k}={esc(v)}" for k, v in props.items()]
        path.write_text("\n".join(lines) + "\n")

    def _role_flags(self, role: str) -> list[str]:
        if role == "server":
            return [
                f"-Xmx{self.heap}",
                "-Xms64m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError",
                *self.jvm_opts,
            ]
        # the one-shot storage tool: start quick, stay small
        return ["-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]

    def _java_cmd(
        self,
        java: str,
        main: str,
        data_dir: Path,
        *args: str,
        server: bool,
        extra: Sequence[str] = (),
    ) -> list[str]:
        return [
            java,
            *self._role_flags("server" if server else "storage"),
            *extra,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={data_dir}",
            f"-Dlocalkafka.workdir={self.workdir}",
            "-cp",
            str(self.libs_dir / "*"),
            main,
            *args,
        ]

    # ------------------------------------------------------------------ start / stop
    def start(self, timeout: float = 90.0, *, detached: bool = False, fresh: bool = False) -> str:
        """Start the broker and wait until it serves clients: on the storage a previous
        ``stop()`` kept (``keep_data``), on the same ports, unless ``fresh``; else on freshly
        formatted KRaft storage.

        Returns the bootstrap string ``127.0.0.1:<port>``. With ``detached=True`` the broker
        outlives this Python process (used by the CLI; stop it with ``stop`` / the pid file).
        """
        if self.is_running():
            return self.bootstrap
        self._reuse = None
        if fresh:
            self.discard_kept_data()
        elif (kept := self.kept_data()) is not None:
            data_dir, port, cport = kept
            for given, ours in ((self._fixed_port, port), (self._fixed_controller_port, cport)):
                if given and given != ours:
                    raise LocalKafkaError(
                        f"kept storage {data_dir} belongs to ports {port}/{cport}, not {given};"
                        " start fresh (--fresh) to discard it"
                    )
            self._fixed_port, self._fixed_controller_port = port, cport
            self.port, self.controller_port = port, cport
            self._reuse = data_dir
        deadline = time.monotonic() + timeout
        self.install()
        java = _java_executable()
        self._cleanup_stale_cds()
        use_cds = self.cds and not self._cds_disabled_marker(java).exists()
        port_retries = 0 if (self._fixed_port and self._fixed_controller_port) else 2
        while True:
            try:
                bootstrap = self._start_once(java, deadline, detached, use_cds)
            except _PortClashError as exc:  # an auto-picked port got taken meanwhile
                if port_retries <= 0:
                    raise LocalKafkaError(str(exc)) from None
                port_retries -= 1
                _log(f"{exc}; retrying with new ports")
                continue
            except _CdsSuspectError as exc:  # a JVM using class-data sharing failed: retry without
                _log(f"{exc}; retrying without class-data sharing")
                use_cds = False
                self._cds_suspect = True
                continue
            if self._cds_suspect:  # it works without CDS, so CDS was the problem: stop using it
                self._disable_cds(java)
            return bootstrap

    def _start_once(self, java: str, deadline: float, detached: bool, use_cds: bool) -> str:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        port = self._fixed_port or find_free_port(self.HOST)
        cport = self._fixed_controller_port or find_free_port(self.HOST)
        while cport == port:
            cport = find_free_port(self.HOST)
        for fixed in (self._fixed_port, self._fixed_controller_port):
            if fixed and _port_is_open(self.HOST, fixed):
                raise LocalKafkaError(f"port {fixed} on {self.HOST} is already in use")
        self.port, self.controller_port = port, cport
        try:
            return self._format_and_launch(java, deadline, detached, use_cds, t0)
        except BaseException:
            if self._data_dir is not None and not self.keep_data and self._reuse is None:
                shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
            raise

    def _format_and_launch(
        self, java: str, deadline: float, detached: bool, use_cds: bool, t0: float
    ) -> str:
        assert self.port is not None and self.controller_port is not None
        port, cport = self.port, self.controller_port

        data_dir = self.workdir / f"data-{port}"
        reuse = self._reuse == data_dir
        if not reuse:
            shutil.rmtree(data_dir, ignore_errors=True)
            data_dir.mkdir(parents=True)
        self._data_dir = data_dir
        props_path = data_dir / "server.properties"
        self._write_properties(props_path, self._server_properties(data_dir, port, cport))
        (data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES.format(level=self.log_level))

        self._rotate_log()
        server_main, storage_main = self._main_classes()
        cluster_id = "(kept)" if reuse else _random_cluster_id()
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            what = "restart on kept storage" if reuse else "format + start"
            log.write(
                f"\n===== localkafka {stamp}: {what} on {self.HOST}:{port} "
                f"(controller {cport}, cluster {cluster_id}, data {data_dir})\n".encode()
            )
            log.flush()
            self._log_offset = log.tell()

            # 1. Format the KRaft storage (one-shot JVM), unless restarting on kept storage.
            t_fmt = 0.0
            if not reuse:
                cds_flags, cds_dump = self._cds_plan(java, "storage", use_cds)
                fmt_cmd = self._java_cmd(
                    java, storage_main, data_dir, "format", "-t", cluster_id, "-c", str(props_path),
                    server=False, extra=cds_flags,
                )  # fmt: skip
                try:
                    fmt = subprocess.run(
                        fmt_cmd,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=data_dir,
                        timeout=max(5.0, deadline - time.monotonic()),
                        check=False,
                    )
                except subprocess.TimeoutExpired:
                    raise LocalKafkaError(
                        f"formatting KRaft storage timed out; see {self.log_path}"
                    ) from None
                if fmt.returncode != 0:
                    if cds_dump is not None:
                        cds_dump.tmp.unlink(missing_ok=True)
                    if cds_flags:
                        raise _CdsSuspectError(f"storage format failed (exit {fmt.returncode})")
                    raise LocalKafkaError(
                        f"formatting KRaft storage failed (exit {fmt.returncode}); "
                        f"see {self.log_path}:\n{self._log_since_start(25)}"
                    )
                if cds_dump is not None:
                    self._cds_publish(cds_dump)
                t_fmt = time.monotonic() - t0

            # 2. Start the broker.
            cds_flags, cds_dump = self._cds_plan(java, "server", use_cds)
            self._cds_pending = cds_dump
            if cds_dump is not None:
                (data_dir / "cds-pending.json").write_text(cds_dump.to_json())
            use_pdeathsig = (
                not detached
                and sys.platform.startswith("linux")
                and threading.current_thread() is threading.main_thread()
                and _load_prctl()
            )
            self._proc = subprocess.Popen(
                self._java_cmd(
                    java, server_main, data_dir, str(props_path), server=True, extra=cds_flags
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                start_new_session=detached,
                preexec_fn=_set_pdeathsig if use_pdeathsig else None,  # noqa: PLW1509
            )
        self._pid = self._proc.pid
        if not detached and not self._atexit_registered:
            atexit.register(self._atexit_stop)
            self._atexit_registered = True
        try:
            self._wait_ready(deadline, used_cds=bool(cds_flags))
        except BaseException:
            self._terminate(grace=5.0)
            self._discard_cds_pending()
            raise
        if detached:
            self.pid_path.write_text(f"{self._pid}\n")
            self.bootstrap_path.write_text(self.bootstrap + "\n")
        _log(
            f"Kafka {self.kafka_version or ''} ready at {self.bootstrap} (pid {self._pid}) in "
            f"{time.monotonic() - t0:.1f}s (format {t_fmt:.1f}s); log: {self.log_path}"
        )
        return self.bootstrap

    def _log_since_start(self, lines: int) -> str:
        """The last ``lines`` lines this start wrote to broker.log."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(max(self._log_offset, fh.seek(0, os.SEEK_END) - 256 * 1024))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, deadline: float, used_cds: bool = False) -> None:
        assert self._proc is not None and self.port is not None
        last: str = "no answer yet"
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                self._pid = None
                tail = self._log_since_start(40)
                if "Address already in use" in tail:
                    raise _PortClashError(
                        f"port {self.port} or {self.controller_port} was taken by someone else "
                        f"(Address already in use)"
                    )
                if used_cds:
                    raise _CdsSuspectError(f"broker exited with code {code} during startup")
                hint = ""
                if "UnsupportedClassVersionError" in tail:
                    hint = f"\nKafka 4.x needs Java 17 or newer ({INSTALL_HINT})."
                raise LocalKafkaError(
                    f"Kafka broker exited with code {code} during startup; see {self.log_path}:\n"
                    f"{tail}{hint}"
                )
            try:
                brokers = probe_broker(self.HOST, self.port, timeout=2.0)
                if any(node == NODE_ID and p == self.port for node, _h, p in brokers):
                    return
                last = f"metadata lists brokers {brokers} (not yet unfenced)"
            except (OSError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise LocalKafkaError(
                    f"Kafka broker not ready on {self.HOST}:{self.port} in time ({last}); "
                    f"see {self.log_path}:\n{self._log_since_start(30)}"
                )
            time.sleep(0.1)

    # ------------------------------------------------------------------ class-data sharing
    # The JVM spends most of the broker's start-up loading and verifying ~5,000 classes. A
    # dynamic AppCDS archive (JDK 13+) of those classes, written by the first broker/format run
    # at exit (-XX:ArchiveClassesAtExit) and mapped by later runs (-XX:SharedArchiveFile), roughly
    # halves start-up. Archives live next to the jars, are keyed by JVM binary, jars and flags,
    # are validated before use, and any failure falls back to a plain start (and disables CDS
    # for that JVM). LOCALKAFKA_CDS=0 (or cds=False) turns it off.

    def _java_key(self, java: str) -> str:
        real = os.path.realpath(java)
        try:
            st = os.stat(real)
            ident = f"{real}|{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            ident = real
        return hashlib.sha256(ident.encode()).hexdigest()[:12]

    def _cds_disabled_marker(self, java: str) -> Path:
        return self.libs_dir / f".cds-disabled-{self._java_key(java)}"

    def _cds_archive(self, java: str, role: str) -> Path:
        stamp = self._stamp() or {}
        parts = [self._java_key(java), role, str(stamp.get("pom_sha256")), str(stamp.get("jars"))]
        parts += self._role_flags(role)
        key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
        return self.libs_dir / f".cds-{role}-{key}.jsa"

    def _cds_plan(self, java: str, role: str, use_cds: bool) -> tuple[list[str], _CdsDump | None]:
        """JVM flags for class-data sharing, and the archive to publish after a clean exit."""
        if not use_cds:
            return [], None
        final = self._cds_archive(java, role)
        if final.is_file():
            return [f"-XX:SharedArchiveFile={final}"], None
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        check = [
            java, "-Xshare:on", f"-XX:SharedArchiveFile={tmp}", *self._role_flags(role),
            "-cp", str(self.libs_dir / "*"), "-version",
        ]  # fmt: skip
        return [f"-XX:ArchiveClassesAtExit={tmp}"], _CdsDump(tmp, final, check)

    @staticmethod
    def _cds_publish(dump: _CdsDump) -> None:
        """Check a freshly dumped archive (a truncated one would crash the JVM) and publish it."""
        ok = False
        if dump.tmp.is_file() and dump.tmp.stat().st_size > 0:
            try:
                res = subprocess.run(
                    dump.check,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=30,
                    check=False,
                )
                ok = res.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
        if ok:
            os.replace(dump.tmp, dump.final)
        else:
            dump.tmp.unlink(missing_ok=True)

    def _discard_cds_pending(self) -> None:
        if self._cds_pending is not None:
            self._cds_pending.tmp.unlink(missing_ok=True)
        self._cds_pending = None

    def _disable_cds(self, java: str) -> None:
        with contextlib.suppress(OSError):
            self._cds_disabled_marker(java).write_text("class-data sharing failed with this JVM\n")
            for archive in self.libs_dir.glob(".cds-*.jsa*"):
                archive.unlink(missing_ok=True)
        self._cds_suspect = False

    def _cleanup_stale_cds(self) -> None:
        cutoff = time.time() - 3600
        for tmp in self.libs_dir.glob(".cds-*.jsa.tmp-*"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()

    def _rotate_log(self) -> None:
        try:
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_suffix(".log.1"))
        except OSError:
            pass

    def _terminate(self, grace: float) -> bool:
        """SIGTERM, wait ``grace`` s, SIGKILL. True if the broker exited on SIGTERM."""
        pid = self._pid
        proc = self._proc
        if pid is None:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        graceful = self._wait_exit(proc, pid, grace)
        if not graceful:
            _log(f"broker pid {pid} did not stop within {grace:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(proc, pid, 10.0)
        self._proc = None
        self._pid = None
        return graceful

    @staticmethod
    def _wait_exit(proc: subprocess.Popen[bytes] | None, pid: int, timeout: float) -> bool:
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not _pid_alive(pid):
                return True
            time.sleep(0.05)
        return not _pid_alive(pid)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the broker, wait up to ``timeout`` s, then SIGKILL. Idempotent."""
        if self._pid is not None:
            graceful = self._terminate(grace=timeout)
            if graceful and self._cds_pending is not None:
                # The JVM wrote its class-data archive on the way out; check and keep it.
                with contextlib.suppress(OSError):
                    self._cds_publish(self._cds_pending)
        self._discard_cds_pending()
        if self._data_dir is not None and self.keep_data and self.port and self.controller_port:
            kept = {
                "data_dir": str(self._data_dir),
                "port": self.port,
                "controller_port": self.controller_port,
            }
            self.kept_path.write_text(json.dumps(kept) + "\n")
        elif self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            kept_now = self.kept_data()
            if kept_now is not None and kept_now[0] == self._data_dir:
                self.kept_path.unlink(missing_ok=True)
        self._data_dir = None
        for p in (self.pid_path, self.bootstrap_path):
            if p.is_file() and self._pidfile_is_ours(p):
                p.unlink(missing_ok=True)

    def _pidfile_is_ours(self, path: Path) -> bool:
        # Only remove pid/bootstrap files that describe the broker this object ran (or none).
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return True
        return not _pid_alive(pid)

    def _atexit_stop(self) -> None:
        with contextlib.suppress(Exception):
            if self._proc is not None:
                self.stop(timeout=15.0)

    # ------------------------------------------------------------------ detached broker (pid file)
    @classmethod
    def attach(
        cls, workdir: Path, *, libs_dir: Path | None = None, keep_data: bool = False
    ) -> LocalKafka | None:
        """The detached broker recorded in ``<workdir>/broker.pid``, if it is still running."""
        kafka = cls(Path(workdir), libs_dir=libs_dir, keep_data=keep_data)
        try:
            pid = int(kafka.pid_path.read_text().strip())
            bootstrap = kafka.bootstrap_path.read_text().strip()
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        cmdline = _pid_cmdline(pid) + " "
        if f" -Dlocalkafka.workdir={kafka.workdir} " not in cmdline:
            return None  # pid was recycled by something else
        host, _, port = bootstrap.rpartition(":")
        kafka.port = int(port)
        kafka._pid = pid
        data_dir = kafka.workdir / f"data-{port}"
        kafka._data_dir = data_dir if data_dir.is_dir() else None
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in (data_dir / "server.properties").read_text().splitlines():
                if line.startswith("controller.quorum.voters="):
                    kafka.controller_port = int(line.rsplit(":", 1)[1])
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            kafka._cds_pending = _CdsDump.from_json((data_dir / "cds-pending.json").read_text())
        return kafka

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self.HOST}:{self.port}" if self.is_running() else "stopped"
        return f"<LocalKafka {state} workdir={self.workdir}>"


class _CdsDump(NamedTuple):
    """A class-data archive being written by a JVM at exit: where, where to, how to check it."""

    tmp: Path
    final: Path
    check: list[str]

    def to_json(self) -> str:
        return json.dumps({"tmp": str(self.tmp), "final": str(self.final), "check": self.check})

    @classmethod
    def from_json(cls, text: str) -> _CdsDump:
        data = json.loads(text)
        return cls(Path(data["tmp"]), Path(data["final"]), [str(a) for a in data["check"]])


class _PortClashError(LocalKafkaError):
    pass


class _CdsSuspectError(LocalKafkaError):
    pass


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _default_workdir() -> Path:
    env = os.environ.get("LOCALKAFKA_HOME")
    return Path(env) if env else DEFAULT_WORKDIR


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localkafka.py",
        description="Fetch and run a real single-node Apache Kafka broker (KRaft) on the JDK.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--workdir",
            type=Path,
            default=_default_workdir(),
            help="state dir (default: $LOCALKAFKA_HOME or <repo>/.local/kafka)",
        )
        p.add_argument(
            "--libs-dir",
            type=Path,
            default=None,
            help="where the jars live (default: <workdir>/libs)",
        )

    def starting(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
        p.add_argument("--controller-port", type=int, default=None)
        p.add_argument("--heap", default="512m", help="JVM -Xmx (default 512m)")
        p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for readiness")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="extra server.properties setting (repeatable)",
        )

    p_install = sub.add_parser("install", help="download the broker jars (idempotent)")
    common(p_install)
    p_install.add_argument("--force", action="store_true", help="re-download even if present")

    p_start = sub.add_parser("start", help="start a detached broker; prints the bootstrap")
    common(p_start)
    starting(p_start)
    p_start.add_argument(
        "--fresh", action="store_true", help="discard storage kept by stop --keep-data"
    )

    p_run = sub.add_parser("run", help="run a broker in the foreground until Ctrl-C")
    common(p_run)
    starting(p_run)

    p_stop = sub.add_parser("stop", help="stop the detached broker of --workdir")
    common(p_stop)
    p_stop.add_argument("--timeout", type=float, default=30.0)
    p_stop.add_argument(
        "--keep-data",
        action="store_true",
        help="keep data-<port>/: the next start restarts on it, same ports",
    )

    p_status = sub.add_parser("status", help="exit 0 and print the bootstrap if running")
    common(p_status)
    return parser


def _parse_sets(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LocalKafkaError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    workdir: Path = args.workdir
    libs_dir: Path | None = args.libs_dir
    try:
        if args.command == "install":
            t0 = time.monotonic()
            libs = LocalKafka(workdir, libs_dir=libs_dir).install(force=args.force)
            _log(f"jars ready in {libs} ({time.monotonic() - t0:.2f}s)")
            return 0

        if args.command == "status":
            running = LocalKafka.attach(workdir, libs_dir=libs_dir)
            if running is None:
                print("stopped")
                return 1
            host, _, port = running.bootstrap.rpartition(":")
            try:
                probe_broker(host, int(port))
                healthy = "ready"
            except (OSError, ValueError) as exc:
                healthy = f"not answering ({exc})"
            rss = running.rss_bytes()
            rss_txt = f", rss {rss / 2**20:.0f} MiB" if rss else ""
            _log(f"pid {running.pid}, {healthy}{rss_txt}")
            print(running.bootstrap)
            return 0 if healthy == "ready" else 2

        if args.command == "stop":
            running = LocalKafka.attach(workdir, libs_dir=libs_dir, keep_data=args.keep_data)
            if running is None:
                for p in (workdir / "broker.pid", workdir / "bootstrap"):
                    p.unlink(missing_ok=True)
                _log("no running broker")
                return 0
            t0 = time.monotonic()
            running.stop(timeout=args.timeout)
            _log(f"stopped in {time.monotonic() - t0:.1f}s")
            return 0

        kafka = LocalKafka(
            workdir,
            port=args.port,
            controller_port=args.controller_port,
            heap=args.heap,
            libs_dir=libs_dir,
            extra_config=_parse_sets(args.set),
        )

        if args.command == "start":
            existing = LocalKafka.attach(workdir, libs_dir=libs_dir)
            if existing is not None:
                if args.port is not None and existing.port != args.port:
                    raise LocalKafkaError(
                        f"a broker is already running at {existing.bootstrap} "
                        f"(pid {existing.pid}); stop it first"
                    )
                _log(f"already running (pid {existing.pid})")
                print(existing.bootstrap)
                return 0
            print(kafka.start(timeout=args.timeout, detached=True, fresh=args.fresh), flush=True)
            return 0

        if args.command == "run":
            stop_event = threading.Event()

            def _on_signal(signum: int, _frame: object) -> None:
                stop_event.set()

            signal.signal(signal.SIGTERM, _on_signal)
            signal.signal(signal.SIGINT, _on_signal)
            print(kafka.start(timeout=args.timeout), flush=True)
            try:
                while not stop_event.wait(1.0):
                    if not kafka.is_running():
                        _log(f"broker exited unexpectedly; see {kafka.log_path}")
                        return 1
            finally:
                kafka.stop()
            return 0
    except LocalKafkaError as exc:
        _log(f"error: {exc}")
        return 1
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            _log("error: no space left on device")
            return 1
        raise
    return 2


if __name__ == "__main__":
    sys.exit(main())
