"""The `erp` command."""

from __future__ import annotations

import asyncio
import signal

import click
import structlog

from erp import logs
from erp.bootstrap import Endpoints, Service, servers
from erp.settings import Settings

log = structlog.get_logger("erp")


@click.group(help="ERP service. Configuration: ERP_* environment variables (see README).")
def main() -> None:
    pass


@main.command(help="Run the HTTP API with the relay and projectors.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers-only", is_flag=True, help="No HTTP: only relay and projectors.")
def serve(host: str, port: int, workers_only: bool) -> None:
    settings = Settings()
    logs.configure(settings.log_level, json=settings.log_json)
    with servers(settings) as endpoints:
        if workers_only:
            _run_until_signal(settings, endpoints)
            return
        import uvicorn

        from api.app import create_app

        # uvicorn re-raises SIGTERM after its graceful shutdown; as an exception it lets the
        # embedded servers stop too, where the default action would kill us first.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        app = create_app(Service(settings, endpoints))
        log.info("serving", url=f"http://{host}:{port}", openapi=f"http://{host}:{port}/openapi.json")
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                    lifespan="on", timeout_graceful_shutdown=10)


@main.command(help="Run only the relay (event store to JetStream).")
def relay() -> None:
    settings = Settings(run_projectors=False)
    logs.configure(settings.log_level, json=settings.log_json)
    with servers(settings) as endpoints:
        _run_until_signal(settings, endpoints)


@main.command(help="Run only the projectors (JetStream to read models).")
def project() -> None:
    settings = Settings(run_relay=False)
    logs.configure(settings.log_level, json=settings.log_json)
    with servers(settings) as endpoints:
        _run_until_signal(settings, endpoints)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_until_signal(settings: Settings, endpoints: Endpoints) -> None:
    async def run() -> None:
        service = Service(settings, endpoints)
        await service.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("running", relay=settings.run_relay, projectors=settings.run_projectors)
        try:
            await stop.wait()
        finally:
            await service.stop()

    asyncio.run(run())
