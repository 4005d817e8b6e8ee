"""A three-node JetStream cluster of real nats-server processes on loopback, each with its
own free ports, store folder and server name, that a test can kill -9 node by node."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from erp.embedded import EmbeddedNats, free_port

CLUSTER_NAME = "erp-reliability"


@dataclass
class Node:
    name: str
    folder: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def route(self) -> str:
        return f"nats-route://127.0.0.1:{self.cluster_port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def jsz(self) -> dict[str, Any]:
        """The node's own view of JetStream (monitoring endpoint /jsz)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/jsz", timeout=2) as answer:
            view: dict[str, Any] = json.load(answer)
            return view


class NatsCluster:
    def __init__(self, folder: Path, size: int = 3) -> None:
        self.folder = folder.resolve()
        self.nodes = [Node(f"n{i}", self.folder / f"n{i}") for i in range(1, size + 1)]

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated (as ERP_NATS_URL takes them)."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def start(self, timeout: float = 30.0) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            for node in self.nodes:
                self.start_node(node)
            self.wait_for_meta_leader(timeout)
        except BaseException:
            self.stop()
            raise

    def start_node(self, node: Node) -> None:
        node.folder.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f'"{other.route}"' for other in self.nodes if other is not node)
        config = node.folder / "server.conf"
        config.write_text(
            f'server_name: "{node.name}"\n'
            f"listen: 127.0.0.1:{node.port}\n"
            f"http: 127.0.0.1:{node.monitor_port}\n"
            f'jetstream {{ store_dir: "{node.folder / "jetstream"}" }}\n'
            f'cluster {{ name: "{CLUSTER_NAME}", listen: 127.0.0.1:{node.cluster_port}, '
            f"routes: [{routes}] }}\n"
        )
        log = (node.folder / "nats-server.log").open("ab")
        node.process = subprocess.Popen(
            [EmbeddedNats.binary(), "-c", str(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_for_meta_leader(self, timeout: float = 30.0) -> str:
        """Until every live node sees the same JetStream meta leader, and it sees its peers current."""
        deadline = time.monotonic() + timeout
        seen: Any = None
        while time.monotonic() < deadline:
            live = [node for node in self.nodes if node.alive]
            try:
                views = [node.jsz().get("meta_cluster", {}) for node in live]
            except OSError as error:  # still starting
                seen = repr(error)
            else:
                leaders = {view.get("leader") for view in views}
                seen = views
                leader = leaders.pop() if len(leaders) == 1 else None
                own = next((v for n, v in zip(live, views, strict=True) if n.name == leader), None)
                if own is not None and all(v.get("cluster_size") == len(self.nodes) for v in views) \
                        and all(peer.get("current") for peer in own.get("replicas", [])):
                    return str(leader)
            time.sleep(0.1)
        raise TimeoutError(f"no JetStream meta leader within {timeout} s: {seen!r}")

    def kill(self, name: str) -> None:
        """kill -9: no shutdown, no goodbye to the other nodes."""
        node = self.node(name)
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
                try:
                    node.process.wait(15)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
