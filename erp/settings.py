"""Configuration from `ERP_`-prefixed environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ERP_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL. Unset: start an embedded PostgreSQL under data_dir.",
    )
    api_database_url: str | None = Field(
        default=None,
        description="The API's read login: a member of the erp_api role (row-level security). "
        "Unset: the read pool connects like the rest and switches to erp_api (SET ROLE).",
    )
    nats_url: str | None = Field(
        default=None,
        description="NATS URL. Unset: start an embedded nats-server with JetStream.",
    )
    data_dir: Path = Field(
        default=Path(".erp-data"), description="Folder for embedded servers' data."
    )
    stream: str = Field(default="ERP", description="JetStream stream the relay writes.")
    stream_replicas: int = Field(default=1, ge=1, le=5)
    log_level: Annotated[Literal["debug", "info", "warning", "error", "critical"],
                         BeforeValidator(_lower)] = "info"
    log_json: bool = Field(default=True, description="JSON logs (false: console).")

    run_relay: bool = Field(default=True, description="Take part in relay leadership.")
    run_projectors: bool = Field(default=True, description="Take part in projector leadership.")
    run_inbound: bool = Field(default=True, description="Consume other services' events.")
    run_reactions: bool = Field(
        default=True, description="Call treasury over REST for tenants configured for it."
    )
    inbound_streams: dict[str, str] = Field(
        default={"auth": "AUTH", "treasury": "TREASURY", "inventory": "INVENTORY",
                 "logistics": "LOGISTICS", "pos": "POS", "iot": "IOT", "projects": "PROJECTS"},
        description="Each platform service's JetStream stream (JSON object).",
    )
    dead_letter_stream: str = Field(
        default="ERP_DLQ", description="Where inbound events that cannot be handled are parked."
    )
    webhook_private_addresses: bool = Field(
        default=False, description="Let tenants' webhook endpoints be on loopback, private or link-local "
        "addresses and over plain http (development; receivers inside the platform's own network)."
    )
    inbound_max_deliver: int = Field(
        default=20, ge=1, description="Attempts at an inbound event before it is given up "
        "(backoff 1 s doubling to 30 s: 20 attempts span about 8 minutes)."
    )

    snapshot_interval: int = Field(default=100, ge=1, description="Events between an aggregate's snapshots.")
    aggregate_cache_size: int = Field(
        default=10_000, ge=0,
        description="Aggregates kept in memory between commands (decided on without reading the database, "
        "the save's version check proving them current; 0: none).")
    relay_batch_size: int = Field(default=2000, ge=1, le=4000)
    relay_idle_catch_up_seconds: float = Field(
        default=5.0, gt=0, description="Catch-up read after this long without a NOTIFY."
    )
    publish_ack_timeout_seconds: float = Field(default=10.0, gt=0)
    projector_batch_size: int = Field(default=1000, ge=1)

    db_pool_size: int = Field(default=8, ge=1)
    command_retries: int = Field(
        default=3, ge=0, description="Transparent retries of a command after a version clash."
    )
    group_commit_max: int = Field(default=256, ge=1, description="Commands saved per transaction.")
    idempotency_key_hours: int = Field(
        default=168, ge=1, description="How long an Idempotency-Key answers its request's repeats; "
        "older keys are deleted (the keys of other services' events' effects are kept).")
    jwt_jwks_url: str | None = Field(
        default=None, description="The auth service's JWKS URL (keys cached, refetched on an unknown kid)."
    )
    jwt_public_key: Path | None = Field(
        default=None, description="Or a PEM file with the auth service's public key (RSA or EC P-256)."
    )
    jwt_issuer: str | None = Field(default=None, description="Required `iss` of tokens.")
    jwt_audience: str | None = Field(default=None, description="Required `aud` of tokens.")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body accepted.")
    read_wait_max_seconds: float = Field(
        default=5.0, gt=0, description="Longest a query may wait for its read model to catch up."
    )

    secret_keys: SecretStr | None = Field(
        default=None,
        description="Tier-1 master keys `id:BASE64KEY,...` (32-byte AES keys); the first "
        "encrypts, all decrypt. Never stored in the database.",
    )
    secret_keys_file: Path | None = Field(
        default=None,
        description="File holding the Tier-1 master keys, one `id:BASE64KEY` per line "
        "(a Kubernetes secret in production); instead of secret_keys.",
    )
