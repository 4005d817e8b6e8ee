"""How a request reaches a peer: URL, headers and JSON body on one shared HTTP client,
always through the policy.

Every request carries `X-Tenant-ID`, the peer's credential and, when given,
`X-Correlation-ID`; every mutation an `Idempotency-Key`. Bodies are `msgspec` Structs
with money as a JSON number; answers are decoded leniently (unknown fields ignored).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast
from urllib.parse import quote, urljoin
from uuid import UUID

import httpx
import msgspec

from aggregates.tenant_settings import valid_tenant_id
from integrations.policy import PeerResponseInvalid, Policy, require_idempotency_key

R = TypeVar("R")

MAX_PAGES = 1000  # a peer whose `next` links never end must not keep us for ever

_encoder = msgspec.json.Encoder(decimal_format="number")  # money is a JSON number


@dataclass(frozen=True, kw_only=True)
class PeerConfig:
    """Where a peer is and how we prove who we are. The credential is a tier-1 value:
    the whole header value, e.g. "Bearer …" for `Authorization`, or a key for `X-API-Key`."""

    name: str
    base_url: str
    credential: str = field(repr=False)
    credential_header: str = "Authorization"

    def __post_init__(self) -> None:
        url = httpx.URL(self.base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"peer {self.name}: base_url must be an http(s) URL, not {self.base_url!r}")
        if not self.credential:
            raise ValueError(f"peer {self.name}: no credential")


def segment(value: str | UUID) -> str:
    """An id as one URL path segment, escaped so that it cannot reach another path."""
    text = str(value)
    if text in ("", ".", ".."):
        raise ValueError(f"{text!r} is not an id")
    return quote(text, safe="")


class Page(msgspec.Struct, Generic[R]):
    """A list in pages, as Django REST framework sends it; other fields are ignored."""

    results: list[R]
    next: str | None = None


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(shape: Any) -> msgspec.json.Decoder[Any]:
    if shape not in _decoders:
        _decoders[shape] = msgspec.json.Decoder(shape)
    return _decoders[shape]


class Peer:
    """One platform service: its config and breaker, on the shared HTTP client."""

    def __init__(self, config: PeerConfig, http: httpx.AsyncClient, policy: Policy) -> None:
        self.config = config
        self.name = config.name
        self._base_url = config.base_url.rstrip("/")
        self._http = http
        self._policy = policy
        policy.breaker(config.name)  # health() lists the peer before its first call

    async def get(self, operation: str, path: str, response_type: type[R], *, tenant_id: str,
                  correlation_id: str | None = None, params: Mapping[str, str] | None = None) -> R:
        read = self._reader(operation, response_type)
        return await self.send("GET", operation, self._base_url + path, read, tenant_id=tenant_id,
                               correlation_id=correlation_id, params=params)

    async def get_all(self, operation: str, path: str, item_type: type[R], *, tenant_id: str,
                      correlation_id: str | None = None,
                      params: Mapping[str, str] | None = None) -> list[R]:
        """A list answered as a JSON array, or in pages whose `next` links are followed."""
        shape = cast(type[list[R] | Page[R]], list[item_type] | Page[item_type])  # type: ignore[valid-type]
        read = self._reader(operation, shape)
        items: list[R] = []
        url = self._base_url + path
        for _ in range(MAX_PAGES):
            page = await self.send("GET", operation, url, read, tenant_id=tenant_id,
                                   correlation_id=correlation_id, params=params)
            if isinstance(page, list):
                return items + page
            items.extend(page.results)
            if page.next is None:
                return items
            url, params = self._next_page(operation, url, page.next), None
        raise PeerResponseInvalid(self.name, operation, f"more than {MAX_PAGES} pages")

    async def post(self, operation: str, path: str, body: msgspec.Struct, response_type: type[R], *,
                   tenant_id: str, idempotency_key: str, correlation_id: str | None = None) -> R:
        read = self._reader(operation, response_type)
        return await self.send("POST", operation, self._base_url + path, read,
                               tenant_id=tenant_id, correlation_id=correlation_id,
                               idempotency_key=idempotency_key, body=_encoder.encode(body))

    async def send(self, method: str, operation: str, url: str, read: Callable[[httpx.Response], R], *,
                   tenant_id: str, correlation_id: str | None = None, idempotency_key: str | None = None,
                   body: bytes | None = None, params: Mapping[str, str] | None = None) -> R:
        """One call under the policy; `read` makes the result of a 2xx."""
        require_idempotency_key(method, idempotency_key)
        headers = self._headers(tenant_id, correlation_id, idempotency_key, has_body=body is not None)

        async def attempt() -> httpx.Response:
            return await self._http.request(method, url, headers=headers, content=body, params=params)

        return await self._policy.call(self.name, operation, attempt, read)

    def _headers(self, tenant_id: str, correlation_id: str | None, idempotency_key: str | None, *,
                 has_body: bool) -> dict[str, str]:
        if not valid_tenant_id(tenant_id):
            raise ValueError(f"{tenant_id!r} is not a tenant id")
        headers = {"Accept": "application/json", "X-Tenant-ID": tenant_id,
                   self.config.credential_header: self.config.credential}
        if has_body:
            headers["Content-Type"] = "application/json"
        if correlation_id:
            headers["X-Correlation-ID"] = correlation_id
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def _reader(self, operation: str, shape: type[R]) -> Callable[[httpx.Response], R]:
        decoder = _decoder(shape)

        def read(response: httpx.Response) -> R:
            try:
                result: R = decoder.decode(response.content)
            except msgspec.DecodeError as error:  # also a ValidationError: a field missing or wrong
                raise PeerResponseInvalid(self.name, operation, str(error)) from error
            return result

        return read

    def _next_page(self, operation: str, current: str, link: str) -> str:
        """The next page's URL, only on the peer's own origin: our credential goes nowhere else."""
        url, base = httpx.URL(urljoin(current, link)), httpx.URL(self._base_url)
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise PeerResponseInvalid(self.name, operation, f"next page {link!r} is not on {self._base_url}")
        return str(url)


class PeerTransport:
    """One HTTP client, and so one set of connection pools, for every peer, under one policy."""

    def __init__(self, policy: Policy, http: httpx.AsyncClient | None = None) -> None:
        self.policy = policy
        self._owns_http = http is None
        # No redirects: one could carry our credential to another host.
        self._http = http or httpx.AsyncClient(timeout=policy.limits.timeout_seconds, follow_redirects=False,
                                               headers={"User-Agent": "erp-service"})

    def peer(self, config: PeerConfig) -> Peer:
        return Peer(config, self._http, self.policy)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()
