#!/usr/bin/env python3
"""Build and run a real Confluent-compatible Schema Registry: Apicurio Registry 2.4.2.Final.

Confluent's registry is not on Maven Central; Apicurio's is, and it serves the Confluent API
at ``/apis/ccompat/v7``. ``registry/pom.xml`` assembles it with Quarkus (see the comments
there); ``registry/settings.xml`` maps every repository to Maven Central (the Apicurio parent
names one that cannot be reached). The build (~130 MB, ~2 min cold with the downloads,
~30 s with a warm Maven cache) is cached in ``<workdir>/app`` and redone only when the pom
changes. Storage is H2 in a file under the run directory, so a restarted registry keeps
its schemas and ids (as a real one does). Standard library only.

Library use::

    reg = LocalRegistry(Path(".local/registry"), run_dir)
    url = reg.start()          # http://127.0.0.1:<free port>/apis/ccompat/v7
    reg.stop(); reg.start()    # same port, same schemas
    reg.stop()

Command line::

    python deploy/local/localregistry.py install [--workdir DIR]
    python deploy/local/localregistry.py run [--workdir DIR] [--port N]   # until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LocalRegistry", "install"]

HERE = Path(__file__).resolve().parent
POM_DIR = HERE / "registry"
DEFAULT_WORKDIR = HERE.parent.parent / ".local" / "registry"
JAR = "apicurio-runner-1.0-runner.jar"
API = "/apis/ccompat/v7"


def _log(msg: str) -> None:
    print(f"[localregistry] {msg}", file=sys.stderr, flush=True)


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("pom.xml", "settings.xml"):
        digest.update((POM_DIR / name).read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install(workdir: Path = DEFAULT_WORKDIR) -> Path:
    """Build the registry once (cached by the pom's fingerprint); returns the runner jar."""
    app, stamp = workdir / "app", workdir / "app" / ".fingerprint"
    with _locked(workdir / ".install.lock"):
        if stamp.exists() and stamp.read_text() == _fingerprint() and (app / JAR).exists():
            return app / JAR
        if shutil.which("mvn") is None or shutil.which("java") is None:
            raise RuntimeError("needs a JDK 17 and Maven: apt-get install openjdk-17-jdk maven")
        build = workdir / "build"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        for name in ("pom.xml", "settings.xml"):
            shutil.copy(POM_DIR / name, build / name)
        _log("building Apicurio Registry from Maven Central (first time: ~2 min)")
        started = time.monotonic()
        done = subprocess.run(
            ["mvn", "-B", "-q", "-s", "settings.xml", "package", "-DskipTests"],
            cwd=build,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"registry build failed:\n{done.stdout[-4000:]}")
        shutil.rmtree(app, ignore_errors=True)
        app.mkdir(parents=True)
        shutil.move(str(build / "target" / JAR), str(app / JAR))
        shutil.move(str(build / "target" / "lib"), str(app / "lib"))
        shutil.rmtree(build, ignore_errors=True)
        stamp.write_text(_fingerprint())
        _log(f"built in {time.monotonic() - started:.0f}s")
        return app / JAR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalRegistry:
    """One Apicurio Registry process on loopback; ``stop``/``start`` keep port and schemas."""

    def __init__(self, workdir: Path, run_dir: Path, port: int | None = None) -> None:
        self.workdir = workdir.resolve()
        self.run_dir = run_dir.resolve()
        self.port = port or _free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """What ``SCHEMA_REGISTRY_URL`` / ``SchemaRegistryClient({'url': ...})`` take."""
        return self.base + API

    def start(self, timeout: float = 90.0) -> str:
        jar = install(self.workdir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = (self.run_dir / "registry.log").open("ab")
        self._proc = subprocess.Popen(
            [
                "java",
                "-Xmx256m",
                "-XX:TieredStopAtLevel=1",
                f"-Dquarkus.http.port={self.port}",
                "-Dquarkus.http.host=127.0.0.1",
                f"-Dquarkus.datasource.jdbc.url=jdbc:h2:file:{self.run_dir / 'h2'}",
                "-jar",
                str(jar),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.run_dir,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"registry exited: {self._tail()}")
            if self.ready():
                return self.url
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"registry not ready after {timeout:.0f}s: {self._tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/health/ready", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _tail(self) -> str:
        path = self.run_dir / "registry.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=("install", "run"))
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("LOCALREGISTRY_HOME", DEFAULT_WORKDIR))
    )
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    if args.command == "install":
        print(install(args.workdir))
        return
    registry = LocalRegistry(args.workdir, args.workdir / "run", args.port)
    print(registry.start(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        registry.stop()


if __name__ == "__main__":
    main()
