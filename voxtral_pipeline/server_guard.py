"""What every request to the bot's server must pass before any route sees it (ASGI middleware).

The bot listens on loopback by default, and a web page the user visits can still reach it: a
cross-site ``POST`` with ``Content-Type: text/plain`` needs no CORS preflight, and DNS rebinding
makes a hostile name resolve to 127.0.0.1. So, for every HTTP request and WebSocket handshake,
whatever route it is for (routes added later get the same checks):

- ``Host`` must name this server: the bound address, the loopback names on a loopback bind, or
  ``transport.server.allowed_hosts`` (``*``: any). Otherwise 403.
- ``Origin``, when a browser sends one, must be the server's own origin or one of
  ``transport.server.allowed_origins`` (``*``: any). Otherwise 403 (the WebSocket handshake too).
- A request with a body (POST, PUT, PATCH) must be ``application/json`` (415), and its body is
  read here, counted as it streams, up to ``max_message_bytes``: a ``Content-Length`` over the
  limit is refused before a byte is read, a chunked body as soon as it passes it (413). Nothing
  larger than the limit is ever held in memory.

This is Jupyter's ``allow_origin`` / host allow-list and nginx's ``client_max_body_size``, for a
voice bot. :class:`FloodCooldown` is the server's table of addresses cut off for flooding, which it
consults before it builds a session.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from loguru import logger

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
BODY_METHODS = ("POST", "PUT", "PATCH")
#: Close code for a WebSocket refused at the handshake (uvicorn answers it with HTTP 403).
WS_POLICY_VIOLATION = 1008


def split_host(value: str) -> str:
    """The name part of a ``Host`` header (``[::1]:7860`` -> ``::1``), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def _origin_key(origin: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


class RequestGuard:
    """ASGI middleware: Host and Origin allow-lists, JSON-only bodies read within a size limit."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        hosts: Iterable[str] | None,
        origins: Iterable[str] = (),
        max_body_bytes: int,
    ):
        """``hosts`` None accepts any Host; ``origins`` are allowed besides the server's own."""
        self.app = app
        self.hosts = None if hosts is None else {h.lower() for h in hosts}
        origins = list(origins)
        self.any_origin = "*" in origins
        self.origins = {key for key in map(_origin_key, origins) if key is not None}
        self.max_body_bytes = max_body_bytes
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = self._host_or_origin_problem(scope, headers)
        if problem:
            await self._refuse(scope, send, 403, problem)
            return
        if scope["type"] == "http" and scope.get("method") in BODY_METHODS:
            result = await self._read_body(headers, receive)
            if isinstance(result, tuple):
                await self._refuse(scope, send, *result)
                return
            receive = _replay(result, receive)
        await self.app(scope, receive, send)

    def _host_or_origin_problem(self, scope: Scope, headers: dict[str, str]) -> str | None:
        host = headers.get("host", "")
        if self.hosts is not None and split_host(host) not in self.hosts:
            return f"host {host!r} is not served here (transport.server.allowed_hosts)"
        origin = headers.get("origin")
        if origin is None or self.any_origin:
            return None
        key = _origin_key(origin)
        secure = scope.get("scheme") in ("https", "wss")
        own = _origin_key(f"{'https' if secure else 'http'}://{host}")
        if key is None or (key != own and key not in self.origins):
            return f"origin {origin!r} is not allowed (transport.server.allowed_origins)"
        return None

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | tuple[int, str]:
        limit = self.max_body_bytes
        kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/json":
            return 415, "requests with a body must be Content-Type: application/json"
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return 400, "malformed Content-Length"
            if int(length) > limit:
                return 413, f"request over {limit} bytes"
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return 400, "the client went away mid-request"
            body.extend(message.get("body", b""))
            if len(body) > limit:  # a chunked body: counted as it arrives, never held past the limit
                return 413, f"request over {limit} bytes"
            if not message.get("more_body", False):
                return bytes(body)

    async def _refuse(self, scope: Scope, send: Send, status: int, why: str) -> None:
        self.refused += 1
        log = logger.warning if self.refused <= 20 else logger.debug
        log(f"server: refused a {scope['type']} request to {scope.get('path')}: {why}")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": why[:120]})
            return
        body = json.dumps({"error": why}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app the body already read, then the rest of the connection's messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, extra: Iterable[str]) -> list[str] | None:
    """The Host names a server bound to ``host`` answers (None: any)."""
    extra = [h.strip().lower() for h in extra]
    if "*" in extra:
        return None
    if host in ("0.0.0.0", "::", ""):
        # Every address of the machine is bound: its names cannot be listed here. Without
        # allowed_hosts any is accepted; bind_warning already says to set a token.
        return sorted({*extra, *LOOPBACK_NAMES}) if extra else None
    names = {split_host(host), *extra}
    if is_loopback(host):
        names.update(LOOPBACK_NAMES)
    return sorted(names)


#: Addresses the cooldown table holds at most; past it the entry struck longest ago goes.
COOLDOWN_TABLE_MAX = 4096


def address_key(host: str | None) -> str:
    """Who a cooldown applies to: an IPv4 address, or an IPv6 address's /64 (one host's share).

    An IPv6 host is usually given a whole /64 and can pick any address in it; an IPv4-mapped
    address counts as the IPv4 address. Anything that is not an address (a Unix socket, a test
    client) is its own key.
    """
    if not host:
        return ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class _Offence:
    strikes: int
    until: float
    logged: bool = False


class FloodCooldown:
    """Addresses cut off for flooding, refused new sessions for a while.

    Each cut-off (:meth:`strike`) refuses the address for ``secs``, doubled for each earlier
    offence still remembered, at most ``max_secs``; an address is forgotten ``max_secs`` after its
    cooldown ends. The table is bounded: expired entries are dropped whenever one is added, and past
    ``max_entries`` the entry struck longest ago goes (an attacker with many addresses can only
    shorten cooldowns, never grow memory). Refusals are logged once per cooldown, not per attempt.
    """

    def __init__(
        self,
        secs: float,
        max_secs: float,
        max_entries: int = COOLDOWN_TABLE_MAX,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.secs = secs
        self.max_secs = max(max_secs, secs)
        self.max_entries = max_entries
        self.clock = clock
        self._table: OrderedDict[str, _Offence] = OrderedDict()
        self.refused = 0

    def __len__(self) -> int:
        return len(self._table)

    def strike(self, host: str | None) -> float:
        """``host`` was cut off for flooding: refuse it from now on; returns the cooldown in seconds."""
        key, now = address_key(host), self.clock()
        self._expire(now)
        old = self._table.pop(key, None)
        strikes = 1 + (old.strikes if old is not None else 0)
        secs = min(self.max_secs, self.secs * 2 ** min(strikes - 1, 32))
        self._table[key] = _Offence(strikes, now + secs)
        while len(self._table) > self.max_entries:
            self._table.popitem(last=False)
        logger.warning(
            f"server: {key or 'a client'} was cut off for flooding (offence {strikes}); refusing its "
            f"new sessions for {secs:g} s"
        )
        return secs

    def retry_after(self, host: str | None) -> float | None:
        """Seconds ``host`` is still refused for (None: admitted), counting and logging the refusal."""
        key = address_key(host)
        entry = self._table.get(key)
        if entry is None:
            return None
        left = entry.until - self.clock()
        if left <= 0:
            return None
        self.refused += 1
        if not entry.logged:
            entry.logged = True
            logger.info(
                f"server: refusing new sessions from {key or 'a client'} for {left:.0f} s more "
                "(cut off for flooding); further refusals in this cooldown are not logged"
            )
        return left

    def _expire(self, now: float) -> None:
        for key in [k for k, e in self._table.items() if now > e.until + self.max_secs]:
            del self._table[key]
