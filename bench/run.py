"""The benchmark report: `python -m bench.run [--quick] [--only NAME…]`.

Starts its own PostgreSQL (durable: fsync on) and nats-server on free ports, runs the
service as a separate process (`erp serve`, authentication on) and drives it from other
processes (wrk, or `bench/load.py`), so the load generator never shares the server's
event loop. Every figure is measured next to a baseline in the same run, and reported as
a ratio to it: these machines are noisy. Prints the report and writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvloop
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from erp.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from erp.identity import mint

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
ISSUER, AUDIENCE = "https://auth.bench", "erp-service"
TENANT = "bench-tenant"


@dataclass
class Result:
    name: str
    value: float
    unit: str
    target: str = ""
    baseline: str = ""
    ratio: float | None = None
    met: bool | None = None
    note: str = ""


CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times() -> dict[str, int]:
    """The machine's CPU time so far by kind, in clock ticks (/proc/stat's first line)."""
    try:
        values = Path("/proc/stat").read_text().splitlines()[0].split()[1:1 + len(CPU_FIELDS)]
    except (OSError, IndexError):
        return {}
    return dict(zip(CPU_FIELDS, map(int, values), strict=False))


def machine_shares(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """How the machine's CPU time between two `cpu_times()` went: busy (ours: user, system,
    interrupts), stolen (the hypervisor ran something else while a vCPU wanted to run), waiting
    for the disk, idle; fractions of the total."""
    spent = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in CPU_FIELDS}
    total = sum(spent.values())
    if total <= 0:
        return {}
    busy = sum(spent[kind] for kind in ("user", "nice", "system", "irq", "softirq"))
    return {"busy": busy / total, "stolen": spent["steal"] / total, "disk": spent["iowait"] / total,
            "idle": spent["idle"] / total}


@dataclass
class Report:
    quick: bool
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: list[tuple[str, dict[str, float]]] = field(default_factory=list)  # per section

    def section_ran(self, name: str, shares: dict[str, float]) -> None:
        if shares:
            self.machine.append((name, shares))
            shown = ", ".join(f"{kind} {share:.1%}" for kind, share in shares.items())
            print(f"  machine during {name}: {shown}", flush=True)

    def add(self, result: Result) -> None:
        self.results.append(result)
        mark = {True: "met", False: "MISSED", None: ""}[result.met]
        ratio = f" ({result.ratio:.2f}x {result.baseline})" if result.ratio is not None else ""
        print(f"  {result.name}: {result.value:,.1f} {result.unit}{ratio} {result.target} {mark}", flush=True)

    @property
    def flags(self) -> str:
        return " --quick" if self.quick else ""

    def markdown(self) -> str:
        cpu = _cpu_model()
        lines = [
            "# Benchmarks", "",
            f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m bench.run{self.flags}` "
            f"on {cpu}, {os.cpu_count()} cores, {_memory_gib():.0f} GiB, Python {platform.python_version()}; "
            "PostgreSQL 18 (embedded, fsync on) and nats-server 2.15 on the same machine; the load "
            "generators run in their own processes on the same two cores.", "",
            "| Figure | Measured | Baseline (same run) | Ratio | Target | Met |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.results:
            ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
            met = {True: "yes", False: "**no**", None: ""}[r.met]
            measured = f"{r.value:,.1f} {r.unit}"
            lines.append(f"| {r.name} | {measured} | {r.baseline} | {ratio} | {r.target} | {met} |")
        lines.append("")
        lines.extend(self.notes)
        if self.machine:
            lines += ["", "The machine's CPU time during each section (`/proc/stat`; *stolen*: a virtual CPU "
                      "wanted to run and the host ran something else — the figures of a section with "
                      "much of it are low for reasons outside this code):", "",
                      "| Section | Busy | Stolen | Waiting for the disk | Idle |", "|---|---|---|---|---|"]
            lines += [f"| {name} | {m['busy']:.1%} | {m['stolen']:.1%} | {m['disk']:.1%} | {m['idle']:.1%} |"
                      for name, m in self.machine]
        return "\n".join(lines) + "\n"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float:
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        return kib / 1024 / 1024
    except (OSError, ValueError, IndexError):
        return 0.0


# -- servers -------------------------------------------------------------------------------


@dataclass
class Servers:
    postgres: EmbeddedPostgres
    nats: EmbeddedNats
    folder: Path
    key: ec.EllipticCurvePrivateKey
    public_key: Path

    def database(self, name: str) -> str:
        """A fresh database, and no ERP stream: each section's log starts the stream afresh."""
        asyncio.run(self._delete_streams())
        with psycopg.connect(self.postgres.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.postgres.url.rsplit("/", 1)[0] + f"/{name}"

    async def _delete_streams(self) -> None:
        import contextlib

        from nats.js.errors import NotFoundError

        import nats

        nc = await nats.connect(self.nats.url)
        try:
            for stream in ("ERP", "ERP_DLQ", "ERP_REPLAY"):
                with contextlib.suppress(NotFoundError):
                    await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    def token(self, tenant: str = TENANT) -> str:
        return mint(self.key, tenant_id=tenant, subject="bench-user", roles=("erp.superuser",),
                    issuer=ISSUER, audience=AUDIENCE, ttl_seconds=6 * 3600)

    def env(self, database_url: str, **more: str) -> dict[str, str]:
        return {**os.environ, "ERP_DATABASE_URL": database_url, "ERP_NATS_URL": self.nats.url,
                "ERP_LOG_LEVEL": "warning", "ERP_JWT_PUBLIC_KEY": str(self.public_key),
                "ERP_JWT_ISSUER": ISSUER, "ERP_JWT_AUDIENCE": AUDIENCE, **more}


@contextmanager
def servers() -> Iterator[Servers]:
    (ROOT / ".erp-data").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-", dir=ROOT / ".erp-data"))
    postgres = EmbeddedPostgres(folder / "postgres", database="postgres", durable=True)
    nats_server = EmbeddedNats(folder / "nats")
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = folder / "auth-key.pem"
    public_key.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    try:
        postgres.start()
        nats_server.start()
        yield Servers(postgres, nats_server, folder, key, public_key)
    finally:
        nats_server.stop()
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def peak_rss_mib(self) -> float:
        """The process's peak resident set (VmHWM) so far."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def reset_peak_rss(self) -> None:
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as refs:
            refs.write("5")


@contextmanager
def service(s: Servers, database_url: str, *, split: bool = False) -> Iterator[ServiceProcess]:
    """`erp serve` (API, relay, projectors and consumers in one process), or with `split` the
    API alone and `erp serve --workers-only` beside it."""
    port = free_port()
    log = (s.folder / f"service-{port}.log").open("wb")
    api_only = {f"ERP_RUN_{role}": "false" for role in ("RELAY", "PROJECTORS", "INBOUND", "REACTIONS")}
    process = subprocess.Popen([sys.executable, "-m", "erp", "serve", "--port", str(port)],
                               env=s.env(database_url, **(api_only if split else {})), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=log)
    workers = subprocess.Popen([sys.executable, "-m", "erp", "serve", "--workers-only"],
                               env=s.env(database_url), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=log) if split else None
    running = ServiceProcess(process, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{running.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start: see {log.name}")
            time.sleep(0.2)
        subprocess.run([sys.executable, "-m", "erp", "tenants", "register", TENANT, "--name", "Bench Ltd"],
                       env=s.env(database_url), cwd=ROOT, check=True, capture_output=True)
        yield running
    finally:
        for started in (process, workers):
            if started is None:
                continue
            started.send_signal(signal.SIGTERM)
            try:
                started.wait(30)
            except subprocess.TimeoutExpired:
                started.kill()
                started.wait()
        log.close()


def wrk(url: str, script: str, seconds: int, connections: int, **env: str) -> dict[str, Any]:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
                          str(HERE / script), url], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True).stdout
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    figures["rate"] = (figures["requests"] - figures["non2xx"]) / figures["seconds"]
    return figures


# -- 1. commands over HTTP ---------------------------------------------------------------


def baseline_library_saves(database_url: str, count: int) -> float:
    """The bare eventsourcing library saving new opportunities one at a time, in-process."""
    from eventsourcing.application import Application

    from aggregates.opportunity import Opportunity
    from erp.eventstore import eventsourcing_env

    env = eventsourcing_env(database_url, 2)
    env.pop("APPLICATION_RECORDER_TOPIC")
    app: Application[uuid.UUID] = Application(env=env)
    try:
        for _ in range(50):  # warm up
            app.save(Opportunity.open(tenant_id=TENANT, customer_id="c", title="t", owner="o"))
        started = time.perf_counter()
        for _ in range(count):
            app.save(Opportunity.open(tenant_id=TENANT, customer_id="cust-1", title="Fleet tracking",
                                      owner="wanjiru"))
        return count / (time.perf_counter() - started)
    finally:
        app.close()


def seed_opportunities(s: Servers, url: str, count: int) -> list[str]:
    """`count` opportunities opened through the API (so they are the service's own)."""
    async def open_all() -> list[str]:
        headers = {"Authorization": f"Bearer {s.token()}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            ids: list[str] = []
            for start in range(0, count, 64):
                answers = await asyncio.gather(*(
                    client.post("/api/v1/crm/opportunities",
                                json={"customer_id": f"c{i}", "title": f"seed {i}", "owner": "o"})
                    for i in range(start, min(start + 64, count))))
                ids.extend(a.json()["id"] for a in answers)
            return ids
    return asyncio.run(open_all())


def commands(s: Servers, report: Report, seconds: int, existing: int) -> None:
    print("commands over HTTP", flush=True)
    baseline = baseline_library_saves(s.database("baseline_library"), 500 if report.quick else 2000)
    report.add(Result("eventsourcing library, one save at a time in-process (baseline)", baseline, "saves/s"))
    database_url = s.database("bench_commands")
    with service(s, database_url) as running:
        ids = seed_opportunities(s, running.url, existing)
        ids_file = s.folder / "ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        running.reset_peak_rss()
        opportunities = f"{running.url}/api/v1/crm/opportunities"

        def updates(where: str) -> None:
            upd = wrk(opportunities, "existing_opportunity.lua", seconds, 64, ERP_BENCH_TOKEN=s.token(),
                      ERP_BENCH_IDS=str(ids_file))
            rate = upd["rate"]
            report.add(Result(f"updates of existing opportunities (spread over {existing:,}, {where}), "
                              "64 connections", rate, "commands/s", target="≥ 1,500/s",
                              baseline="library saves", ratio=rate / baseline, met=rate >= 1500))
            report.notes.append(_wrk_note(f"Updates of existing opportunities, {where}", upd))

        # The service opened them: they are in its aggregate cache (ERP_AGGREGATE_CACHE_SIZE, 10,000).
        wrk(opportunities, "existing_opportunity.lua", 3, 64, ERP_BENCH_TOKEN=s.token(),
            ERP_BENCH_IDS=str(ids_file))  # warm up
        updates("all in the aggregate cache")
        wrk(opportunities, "new_opportunity.lua", 3, 64, ERP_BENCH_TOKEN=s.token())  # warm up
        new = wrk(opportunities, "new_opportunity.lua", seconds, 64, ERP_BENCH_TOKEN=s.token())
        rate = new["rate"]
        report.add(Result("new opportunities over HTTP, 64 connections, auth on", rate, "commands/s",
                          target="≥ 2,500/s and ≥ 2.0x baseline", baseline="library saves",
                          ratio=rate / baseline, met=rate >= 2500 and rate >= 2 * baseline))
        report.notes.append(_wrk_note("New opportunities", new))
        updates("pushed out of the aggregate cache by the new opportunities before")
        read = wrk(opportunities, "read_opportunity.lua", seconds, 64, ERP_BENCH_TOKEN=s.token(),
                   ERP_BENCH_IDS=str(ids_file))
        report.add(Result(f"reads of one opportunity with its stage history (spread over {existing:,}), "
                          "64 connections (no target)", read["rate"], "reads/s"))
        report.notes.append(_wrk_note("Reads of one opportunity", read))
        fixed_rate_report(report, fixed_rate(s, running, database_url, rate=200, seconds=seconds * 2))
        rss = running.peak_rss_mib()
        report.add(Result("peak RSS of the service during the command runs", rss, "MiB", target="≤ 200 MiB",
                          met=rss <= 200))
    split_database_url = s.database("bench_split")
    with service(s, split_database_url, split=True) as running:
        fixed_rate(s, running, split_database_url, rate=200, seconds=3)  # warm up
        fixed_rate_report(report, fixed_rate(s, running, split_database_url, rate=200, seconds=seconds * 2),
                          split=True)
        opportunities = f"{running.url}/api/v1/crm/opportunities"
        wrk(opportunities, "new_opportunity.lua", 3, 64, ERP_BENCH_TOKEN=s.token())  # warm up
        split = wrk(opportunities, "new_opportunity.lua", seconds, 64, ERP_BENCH_TOKEN=s.token())
        report.add(Result(f"new opportunities{SPLIT}", split["rate"], "commands/s", target="≥ 2,500/s",
                          baseline="library saves", ratio=split["rate"] / baseline,
                          met=split["rate"] >= 2500))
        report.notes.append(_wrk_note("New opportunities, `erp serve` with ERP_RUN_RELAY/PROJECTORS/INBOUND/"
                                      "REACTIONS=false beside `erp serve --workers-only`", split))


SPLIT = ", API and workers (relay, projectors) in two processes"


def fixed_rate_report(report: Report, fixed: dict[str, Any], *, split: bool = False) -> None:
    where = SPLIT if split else ""
    report.add(Result(f"p99 latency at a fixed 200 commands/s{where}", fixed["p99_ms"], "ms",
                      target="≤ 20 ms", met=fixed["p99_ms"] <= 20))
    report.add(Result(f"freshness p99 (2xx → read-model row visible) at 200/s{where}",
                      fixed["fresh_p99_ms"], "ms", target="≤ 25 ms", met=fixed["fresh_p99_ms"] <= 25))
    report.notes.append(
        f"- Fixed rate{where}: {fixed['sent']:,} commands at 200/s (bench/load.py, latency from each "
        f"command's scheduled start): p50 {fixed['p50_ms']:.1f} ms, p99 {fixed['p99_ms']:.1f} ms; "
        f"freshness p50 {fixed['fresh_p50_ms']:.1f} ms, p99 {fixed['fresh_p99_ms']:.1f} ms; "
        f"non-2xx {fixed['failed']}, never visible {fixed['never_visible']}.")


def _wrk_note(what: str, figures: dict[str, Any]) -> str:
    return (f"- {what}: {figures['requests']:,} requests in {figures['seconds']:.1f} s (wrk, 2 threads, "
            f"64 connections), non-2xx {figures['non2xx']}, socket errors {figures['socket_errors']}, "
            f"latency p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms.")


def fixed_rate(s: Servers, running: ServiceProcess, database_url: str, *, rate: int,
               seconds: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.load", "--url", running.url, "--token", s.token(),
                          "--database-url", database_url, "--rate", str(rate), "--seconds", str(seconds)],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return figures


# -- 3. relay catch-up ----------------------------------------------------------------------


def record_history(database_url: str, events: int, *, tenant: str = TENANT) -> int:
    """Opportunities of 1 to 3 events each (opened, staged, won), stored straight into the
    event store in large batches, until `events` are stored; answers how many."""
    from decimal import Decimal

    from aggregates.opportunity import Opportunity
    from erp.eventstore import EventMetadata, stamp, store_for

    store = store_for(database_url, 2)
    stored = 0
    i = 0
    try:
        while stored < events:
            batch: list[Opportunity] = []
            while stored < events and len(batch) < 1000:
                o = Opportunity.open(tenant_id=tenant, customer_id=f"c{i}", title=f"deal {i}",
                                     owner=f"owner{i % 7}", amount=Decimal(1000 + i))
                if i % 3 and stored + 2 <= events:
                    o.change_stage("proposal")
                if i % 3 == 2 and stored + 3 <= events:
                    o.win(Decimal(i + 1))
                stamp(o, EventMetadata(tenant, f"corr-{i}", f"cause-{i}", "bench"))
                stored += len(o.pending_events)
                batch.append(o)
                i += 1
            store.save(*batch)
    finally:
        store.close()
    return stored


def relay_catch_up(s: Servers, report: Report, events: int) -> None:
    print("relay catch-up", flush=True)
    database_url = s.database("bench_relay")
    total = record_history(database_url, events)
    raw = raw_publish_rate(s, database_url, total)
    report.add(Result("raw nats-py publish_async of the same messages (baseline)", raw, "events/s"))

    async def catch_up() -> tuple[float, float]:
        import nats

        nc = await nats.connect(s.nats.url)
        js = nc.jetstream()
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock runs
            [sys.executable, "-m", "erp", "relay"], env=s.env(database_url), cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        async def published() -> int:
            try:
                return int((await js.stream_info("ERP")).state.messages)
            except Exception:  # not created yet
                return 0

        try:
            return await _catch_up(published, total)
        finally:
            process.terminate()
            process.wait()
            await nc.close()

    rate, seconds = asyncio.run(catch_up())
    report.add(Result(f"relay catch-up of a {total:,}-event backlog into JetStream", rate, "events/s",
                      target="≥ 20,000/s and ≥ 0.5x raw", baseline="raw publish_async", ratio=rate / raw,
                      met=rate >= 20_000 and rate >= 0.5 * raw))
    report.notes.append(f"- Relay: {total:,} stored events published in {seconds:.1f} s by `erp relay` (its "
                        "own process; from the first message in the stream to the last acknowledged), "
                        "chained with Nats-Expected-Last-Msg-Id (one acknowledgement per 100 publishes and "
                        "per read), into a file-backed stream.")
    live_projection_catch_up(s, report, database_url, total)


async def _catch_up(count: Callable[[], Awaitable[int]], total: int,
                    timeout: float = 600) -> tuple[float, float]:
    """Polls `count` until it reaches `total`: the rate from the first count seen on, and the seconds."""
    first, first_count = 0.0, 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counted = await count()
        now = time.perf_counter()
        if counted and not first:
            first, first_count = now, counted
        if counted >= total:
            seconds = max(now - first, 1e-6)
            return (total - first_count) / seconds, seconds
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{total:,} not reached within {timeout:.0f} s")


def live_projection_catch_up(s: Servers, report: Report, database_url: str, total: int) -> None:
    """The stream the relay just filled, applied by `erp project` (the live projector group, in
    its own process): how many events per second live processing sustains."""
    print("live projection catch-up", flush=True)
    process = subprocess.Popen([sys.executable, "-m", "erp", "project"], env=s.env(database_url), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def projected() -> tuple[float, float]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            async def applied() -> int:
                try:
                    cur = await conn.execute("SELECT stream_seq FROM projection_checkpoints "
                                             "WHERE name = 'opportunities'")
                except psycopg.errors.UndefinedTable:  # not started yet
                    return 0
                row = await cur.fetchone()
                return int(row[0]) if row else 0

            return await _catch_up(applied, total)

    try:
        rate, seconds = asyncio.run(projected())
    finally:
        process.terminate()
        process.wait()
    report.add(Result(f"live projectors applying the same {total:,}-event stream (a backlog)", rate,
                      "events/s", target="≥ 2,500/s (keeps up with 2,500 commands/s)", met=rate >= 2_500))
    report.notes.append(f"- Live projection: `erp project` (the projector group, its own process) applied "
                        f"the {total:,} events of that stream to the read models in {seconds:.1f} s "
                        "(from its first checkpoint to the last; each new-opportunity command is one event).")


def raw_publish_rate(s: Servers, database_url: str, total: int) -> float:
    """nats-py's publish_async of the relay's own messages (headers and payloads, built
    beforehand) into a stream of their own, acknowledged, on the same server."""
    from nats.js.api import StreamConfig

    from erp.eventstore import store_for
    from streams.relay import _SELECT, to_message

    store = store_for(database_url, 1)
    try:
        with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
            rows = conn.execute(_SELECT, (0, total)).fetchall()
        messages = [to_message(store, row) for row in rows]
    finally:
        store.close()

    async def publish() -> float:
        import nats

        nc = await nats.connect(s.nats.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"]))
        started = time.perf_counter()
        for message in messages:
            await js.publish_async(f"raw.{message.subject}", message.payload, headers=message.headers)
        await js.publish_async_completed()
        elapsed = time.perf_counter() - started
        count = (await js.stream_info("RAW")).state.messages
        await js.delete_stream("RAW")
        await nc.close()
        if count != len(messages):
            raise RuntimeError(f"raw publish stored {count} of {len(messages)}")
        return len(messages) / elapsed

    return asyncio.run(publish())


# -- 4. projection rebuild -----------------------------------------------------------------

CORE = ("opportunities", "purchase_orders", "payroll", "work_orders")


def record_mixed_history(database_url: str, events: int) -> tuple[int, int]:
    """About three quarters opportunity events and one quarter purchase-order events
    (created with two lines, submitted, approved); answers (events, purchase-order events)."""
    from decimal import Decimal

    from aggregates.purchase_order import OrderLine, PurchaseOrder
    from erp.eventstore import EventMetadata, stamp, store_for

    orders = events // 4
    store = store_for(database_url, 2)
    stored = 0
    try:
        i = 0
        while stored < orders:
            batch: list[PurchaseOrder] = []
            while stored < orders and len(batch) < 300:
                order = PurchaseOrder.create(
                    tenant_id=TENANT, number=f"PO-2026-{i:06d}", vendor_id=f"v{i % 50}", requested_by="buyer",
                    today="2026-11-25", lines=[
                        OrderLine("flour", "Flour 50 kg", Decimal(10), "bag", Decimal(3200)),
                        OrderLine("sugar", "Sugar 50 kg", Decimal(4), "bag", Decimal(6100), "VAT",
                                  Decimal(16))])
                order.submit()
                order.approve("approver-1", "approver")
                stamp(order, EventMetadata(TENANT, f"po-{i}", f"po-{i}", "bench"))
                stored += len(order.pending_events)
                batch.append(order)
                i += 1
            store.save(*batch)
    finally:
        store.close()
    return stored + record_history(database_url, events - stored), stored


async def _prepare_read_models(database_url: str) -> None:
    from erp.bootstrap import all_projections
    from projections.runner import ensure_schema
    from projections.tenancy import ensure_api_role

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await ensure_api_role(conn)
        for projection in all_projections():
            await ensure_schema(conn, projection)


def rebuild_speed(s: Servers, report: Report, events: int, library_events: int) -> None:
    print("projection rebuild", flush=True)
    from erp.bootstrap import all_projections
    from erp.eventstore import store_for
    from projections.rebuild import EventStoreSource, rebuild_many

    database_url = s.database("bench_rebuild")
    total, orders = record_mixed_history(database_url, events)
    asyncio.run(_prepare_read_models(database_url))
    four = [p for p in all_projections() if p.name in CORE]
    store = store_for(database_url, 2)
    try:
        rebuilt = uvloop.run(rebuild_many(database_url, EventStoreSource(store, database_url), four))
    finally:
        store.close()
    seconds = rebuilt[0].seconds
    ours = total / seconds
    copy_rows, copy_seconds = copy_baseline(database_url)
    library = library_projection_rate(database_url, library_events)
    report.add(Result(f"eventsourcing ProjectionRunner, one read model, first {library_events:,} events "
                      "(baseline)", library, "events/s"))
    report.add(Result(f"raw COPY of the rebuilt rows ({copy_rows:,} rows) (baseline)",
                      copy_rows / copy_seconds, "rows/s"))
    report.add(Result(f"rebuild of the four core read models from {total:,} events", ours, "events/s",
                      target="≥ 50,000/s and ≥ 20x ProjectionRunner", baseline="ProjectionRunner",
                      ratio=ours / library, met=ours >= 50_000 and ours >= 20 * library))
    report.notes.append(
        f"- Rebuild: {total:,} events ({total - orders:,} of opportunities, {orders:,} of purchase orders) "
        f"read once from the event store and applied to opportunities, purchase_orders, payroll and "
        f"work_orders (one connection each, at the same time) in {seconds:.1f} s, then swapped in; "
        f"the raw COPY of the {copy_rows:,} rows they hold took {copy_seconds:.2f} s "
        f"({seconds / copy_seconds:.0f}x less than the rebuild).")


def copy_baseline(database_url: str) -> tuple[int, float]:
    """COPY of the rebuilt read models' rows out of and back into tables like them."""
    tables = ("opportunities", "opportunity_stage_history", "purchase_orders", "purchase_order_lines")
    rows = 0
    took = 0.0
    with psycopg.connect(database_url, autocommit=True) as conn:
        for table in tables:
            data = bytearray()
            with conn.cursor().copy(f"COPY {table} TO STDOUT") as out:
                for chunk in out:
                    data += chunk
            conn.execute(f"CREATE TABLE copy_{table} (LIKE {table} INCLUDING ALL)")
            started = time.perf_counter()
            with conn.cursor().copy(f"COPY copy_{table} FROM STDIN") as into:
                into.write(bytes(data))
            took += time.perf_counter() - started
            rows += conn.execute(f"SELECT count(*) FROM copy_{table}").fetchone()[0]  # type: ignore[index]
    return rows, took


def library_projection_rate(database_url: str, events: int) -> float:
    """The eventsourcing library's own ProjectionRunner, with an opportunities view of the
    same shape (a row per opportunity, kept in step with its events), from position 0."""
    from functools import singledispatchmethod

    from eventsourcing.persistence import Tracking
    from eventsourcing.postgres import PostgresTrackingRecorder
    from eventsourcing.projection import Projection, ProjectionRunner

    from aggregates.opportunity import Opportunity
    from erp.eventstore import ErpEventStore, eventsourcing_env

    class OpportunitiesView(PostgresTrackingRecorder):
        def create_table(self) -> None:
            super().create_table()
            with self.datastore.transaction(commit=True) as curs:
                curs.execute("CREATE TABLE IF NOT EXISTS library_opportunities (id uuid PRIMARY KEY, "
                             "tenant_id text, title text, stage text, status text, amount numeric, "
                             "version int)")

        def change(self, sql: str, values: tuple[Any, ...], tracking: Tracking) -> None:
            with self.datastore.transaction(commit=True) as curs:
                if sql:
                    curs.execute(sql, values)
                self._insert_tracking(curs, tracking)

    class OpportunitiesProjection(Projection[OpportunitiesView]):
        name = "library_opportunities"

        @singledispatchmethod
        def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            self.view.change("", (), tracking)

        @process_event.register(Opportunity.Opened)  # type: ignore[attr-defined]
        def _(self, e: Any, tracking: Tracking) -> None:
            self.view.change("INSERT INTO library_opportunities VALUES (%s, %s, %s, %s, 'open', %s, %s)",
                             (e.originator_id, e.tenant_id, e.title, e.stage, e.amount, e.originator_version),
                             tracking)

        @process_event.register(Opportunity.StageChanged)  # type: ignore[attr-defined]
        def _(self, e: Any, tracking: Tracking) -> None:
            self.view.change("UPDATE library_opportunities SET stage = %s, version = %s WHERE id = %s",
                             (e.stage, e.originator_version, e.originator_id), tracking)

        @process_event.register(Opportunity.Won)  # type: ignore[attr-defined]
        def _(self, e: Any, tracking: Tracking) -> None:
            self.view.change("UPDATE library_opportunities SET status = 'won', version = %s WHERE id = %s",
                             (e.originator_version, e.originator_id), tracking)

    env = eventsourcing_env(database_url, 2)
    env.pop("APPLICATION_RECORDER_TOPIC")
    started = time.perf_counter()
    with ProjectionRunner(application_class=ErpEventStore, projection_class=OpportunitiesProjection,
                          view_class=OpportunitiesView, env=env) as runner:
        runner.wait(events, timeout=600)
    return events / (time.perf_counter() - started)


# -- 5. aggregate load ----------------------------------------------------------------------


def aggregate_load(s: Servers, report: Report, events: int) -> None:
    print("aggregate load", flush=True)
    import statistics

    from aggregates.opportunity import Opportunity
    from erp.eventstore import ErpEventStore, EventMetadata, eventsourcing_env, stamp, store_for

    database_url = s.database("bench_load")
    store = store_for(database_url, 1)
    try:
        opportunity = Opportunity.open(tenant_id=TENANT, customer_id="c", title="t0", owner="o")
        while opportunity.version < events:
            for _ in range(min(500, events - opportunity.version)):
                opportunity.update(title=f"t{opportunity.version + len(opportunity.pending_events)}")
            stamp(opportunity, EventMetadata(TENANT, "c", "c", "bench"))
            store.save(opportunity)

        def median_ms(load: Callable[[], Any], times: int) -> float:
            load()  # warm
            took = []
            for _ in range(times):
                started = time.perf_counter()
                loaded = load()
                took.append((time.perf_counter() - started) * 1000)
                assert loaded.version == events
            return statistics.median(took)

        with_snapshots = median_ms(lambda: store.repository.get(opportunity.id), 50)
    finally:
        store.close()
    plain = ErpEventStore(env=eventsourcing_env(database_url, 1))  # no snapshot store: every event
    try:
        without = median_ms(lambda: plain.repository.get(opportunity.id), 5)
    finally:
        plain.close()
    report.add(Result(f"loading an aggregate of {events:,} events, no snapshots (baseline)", without, "ms"))
    report.add(Result(f"loading an aggregate of {events:,} events, snapshot every 100", with_snapshots, "ms",
                      target="≤ 5 ms", baseline="no snapshots (speed-up)", ratio=without / with_snapshots,
                      met=with_snapshots <= 5))


# -- main ----------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[Servers, Report], None]] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="Smaller sizes: a smoke run, not the report.")
    parser.add_argument("--only", nargs="*", help="Only these sections: " + ", ".join(SECTIONS))
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed (apt-get install wrk)")
    report = Report(quick=args.quick)
    started = time.monotonic()
    with servers() as s:
        for name, section in SECTIONS.items():
            if not args.only or name in args.only:
                before = cpu_times()
                section(s, report)
                report.section_ran(name, machine_shares(before, cpu_times()))
    report.notes.append(f"\nThe whole run took {time.monotonic() - started:.0f} s.")
    text = report.markdown()
    print(text)
    if not args.only:
        Path(args.output).write_text(text)
        print(f"written to {args.output}")


SECTIONS["commands"] = lambda s, r: commands(s, r, seconds=5 if r.quick else 15,
                                             existing=1000 if r.quick else 10_000)

SECTIONS["relay"] = lambda s, r: relay_catch_up(s, r, events=20_000 if r.quick else 200_000)

SECTIONS["rebuild"] = lambda s, r: rebuild_speed(s, r, events=100_000 if r.quick else 1_000_000,
                                                 library_events=5_000 if r.quick else 20_000)
SECTIONS["aggregate"] = lambda s, r: aggregate_load(s, r, events=10_000)

if __name__ == "__main__":
    main()
