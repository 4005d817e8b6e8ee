"""Connection to NATS and the definition of the ERP stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

import nats

log = structlog.get_logger("erp.nats")

SUBJECTS = ["erp.>"]
DUPLICATE_WINDOW_SECONDS = 120.0


def stream_config(name: str, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=SUBJECTS,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        description="ERP service events: subject = event type, written only by the relay",
    )


def server_urls(url: str) -> list[str]:
    """`url` names one server or, comma-separated, several servers of a cluster."""
    return [part.strip() for part in url.split(",") if part.strip()]


async def connect(url: str, name: str) -> NATS:
    async def on_error(error: Exception) -> None:
        log.warning("nats error", error=str(error))

    async def on_disconnected() -> None:
        log.warning("nats disconnected")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    client: NATS = await nats.connect(
        server_urls(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    return client


NO_PEERS_FOR_PLACEMENT = 10005  # a cluster with a peer offline cannot place a replicated stream yet
SETTLING_SECONDS = 30.0  # how long ensure_stream waits for a settling cluster


async def ensure_stream(js: JetStreamContext, name: str, replicas: int) -> None:
    """Creates or updates the stream, once the cluster has settled (`until_settled`)."""
    config = stream_config(name, replicas)

    async def create_or_update() -> None:
        try:
            await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(config)
            log.info("stream created", stream=name)
            return
        await js.update_stream(config)

    await until_settled(create_or_update, f"stream {name}")


async def until_settled(work: Callable[[], Awaitable[None]], what: str) -> None:
    """Runs `work` (a JetStream request at start-up); a cluster that is still settling (a peer
    offline, no meta leader yet, a request timing out while leaders are elected) is given
    `SETTLING_SECONDS` before its error is raised."""
    deadline = asyncio.get_running_loop().time() + SETTLING_SECONDS
    while True:
        try:
            await work()
            return
        except (nats.errors.TimeoutError, APIError) as error:
            if not _settling(error) or asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("JetStream cluster settling; trying again", what=what, error=str(error))
            await asyncio.sleep(1.0)


def _settling(error: Exception) -> bool:
    """A cluster electing its meta leader or with a peer offline: worth waiting for."""
    if isinstance(error, APIError):
        return isinstance(error, ServiceUnavailableError) or error.err_code == NO_PEERS_FOR_PLACEMENT
    return True  # a timeout


def header(msg: Any, name: str) -> str | None:
    headers = msg.headers or {}
    value = headers.get(name)
    return str(value) if value is not None else None
