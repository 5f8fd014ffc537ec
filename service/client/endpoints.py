"""The replicas a client spreads its calls over, when there is more than one.

HTTP (`HttpEndpoints`): one URL, several (a list, or one string with commas), or `dns:///host:port`,
meaning every address that name resolves to (a Kubernetes headless Service answers with one address per
ready pod), over plain HTTP (a certificate names a host, not each pod's address: with TLS, use gRPC's
dns:/// or list https:// URLs). Names are resolved again every `refresh_seconds`, and at once after an
address failed. Calls take the addresses in turn; an address that refused a connection or answered 503
sits out `cooldown_seconds` (when every address is out, all are tried). One that answered 429 is busy for
its Retry-After (else `busy_seconds`): other addresses are preferred meanwhile, and a call sent again after
a refusal goes to an address it has not tried yet (`pick(tried)`), so that concurrent chunks of one call,
which move the turn on between a chunk's refusal and its failover, never send it back to the refusing one
while another is free.

gRPC (`grpc_target`): gRPC balances by itself with its `round_robin` policy, over every address of one
target; a list of host:port becomes one `ipv4:`/`ipv6:` target of their addresses, and `dns:///host:port`
is passed as it is.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import socket
import threading
import time
from collections.abc import Callable, Sequence

from rmserve.client.common import Unavailable

DNS = "dns:///"
_NEVER = float("-inf")


def split_endpoints(spec: str | Sequence[str]) -> list[str]:
    """The entries of a list of endpoints, or of one string with commas."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    entries = [entry.strip() for part in parts for entry in part.split(",") if entry.strip()]
    if not entries:
        raise ValueError("no endpoint given")
    return entries


def _host_port(entry: str) -> tuple[str, int]:
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{entry!r}: expected host:port")
    return host.strip("[]"), int(port)


def _url(address: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{address}]:{port}" if ":" in address else f"{scheme}://{address}:{port}"


def _addresses(infos: list) -> list[str]:
    return sorted({info[4][0] for info in infos})


class HttpEndpoints:
    """The base URLs of an HTTP client's replicas, taken in turn. Thread-safe."""

    def __init__(self, spec: str | Sequence[str], refresh_seconds: float = 30.0, cooldown_seconds: float = 5.0,
                 busy_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.refresh_seconds = refresh_seconds
        self.cooldown_seconds = cooldown_seconds
        self.busy_seconds = busy_seconds
        self._clock = clock  # a test's stand-in shows the back-offs without waiting for them
        self._fixed: list[str] = []
        self._names: list[tuple[str, int]] = []
        for entry in split_endpoints(spec):
            if entry.startswith(DNS):
                self._names.append(_host_port(entry.removeprefix(DNS)))
            elif entry.startswith(("http://", "https://")):
                self._fixed.append(entry.rstrip("/"))
            else:
                raise ValueError(f"endpoint {entry!r}: expected http(s)://host:port or dns:///host:port")
        self._resolved: list[str] = []
        self._resolved_at = _NEVER
        self._out_until: dict[str, float] = {}  # refused a connection or answered 503
        self._busy_until: dict[str, float] = {}  # answered 429
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._fixed) + len(self._resolved)

    def __repr__(self) -> str:
        return ",".join(self._fixed + [f"{DNS}{host}:{port}" for host, port in self._names])

    def _stale(self) -> bool:
        return bool(self._names) and self._clock() - self._resolved_at >= self.refresh_seconds

    def _store(self, resolved: list[str], error: OSError | None) -> None:
        with self._lock:
            self._resolved_at = self._clock()
            if resolved or error is None:
                self._resolved = resolved
        if not resolved and not self._fixed and not self._resolved:
            names = ", ".join(f"{host}:{port}" for host, port in self._names)
            raise Unavailable(f"{names} resolved to no address" + (f": {error}" if error else ""))

    def refresh(self) -> None:
        """Resolve the names again (blocking); an empty or failed answer keeps the addresses known."""
        resolved: list[str] = []
        error = None
        for host, port in self._names:
            try:
                resolved += [_url(a, port) for a in _addresses(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))]
            except OSError as e:
                error = e
        self._store(sorted(set(resolved)), error)

    async def arefresh(self) -> None:
        loop = asyncio.get_running_loop()
        resolved: list[str] = []
        error = None
        for host, port in self._names:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                resolved += [_url(a, port) for a in _addresses(infos)]
            except OSError as e:
                error = e
        self._store(sorted(set(resolved)), error)

    def _next(self, tried: set[str] | None) -> str:
        with self._lock:
            urls = self._fixed + self._resolved
            now = self._clock()
            live = [url for url in urls if self._out_until.get(url, _NEVER) <= now] or urls
            untried = [url for url in live if url not in tried] if tried else live
            free = [url for url in (untried or live) if self._busy_until.get(url, _NEVER) <= now]
            choices = free or untried or live
            url = choices[next(self._turn) % len(choices)]
        if tried is not None:
            if url in tried:  # every live replica was tried: a new round (after the call's backoff)
                tried.clear()
            tried.add(url)
        return url

    def live(self) -> int:
        """Replicas not sitting out a failure (at least 1: when all are out, all are tried)."""
        with self._lock:
            now = self._clock()
            return max(1, sum(1 for url in self._fixed + self._resolved if self._out_until.get(url, _NEVER) <= now))

    def pick(self, tried: set[str] | None = None) -> str:
        """The next replica's base URL (resolving the names first when due): a live one, one not in `tried`
        (the replicas one call was sent to since it last had to repeat one; updated here) and not busy
        when there is one."""
        if self._stale():
            self.refresh()
        return self._next(tried)

    async def apick(self, tried: set[str] | None = None) -> str:
        if self._stale():
            await self.arefresh()
        return self._next(tried)

    def failed(self, url: str) -> None:
        """`url` refused a connection or answered 503: leave it out a while, and look the names up again."""
        with self._lock:
            self._out_until[url] = self._clock() + self.cooldown_seconds
            if self._names:
                self._resolved_at = _NEVER

    def busy(self, url: str, retry_after: float | None) -> None:
        """`url` answered 429: prefer the others for its Retry-After (else `busy_seconds`, at most
        `cooldown_seconds`). It stays live: when every replica is busy, the call waits for its backoff."""
        with self._lock:
            wait = self.busy_seconds if retry_after is None else retry_after
            self._busy_until[url] = self._clock() + min(wait, self.cooldown_seconds)


def grpc_target(spec: str | Sequence[str]) -> tuple[str, int]:
    """One gRPC target for `spec`, and how many addresses it lists (1 for a name gRPC resolves itself).

    A single entry is passed as it is ("host:port", "dns:///host:port", or any target gRPC accepts); under
    round_robin gRPC spreads calls over every address a name resolves to. Several host:port entries become
    one "ipv4:a:p,b:p" (or "ipv6:") target of their addresses."""
    entries = split_endpoints(spec)
    if len(entries) == 1:
        return entries[0], 1
    addresses: list[tuple[str, int]] = []
    for entry in entries:
        host, port = _host_port(entry)
        try:
            ipaddress.ip_address(host)
            addresses.append((host, port))
        except ValueError:  # a host name: its addresses
            addresses += [(a, port) for a in _addresses(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))]
    families = {ipaddress.ip_address(a).version for a, _ in addresses}
    if len(families) > 1:
        raise ValueError(f"{entries}: IPv4 and IPv6 addresses cannot share one gRPC target; use a dns:/// name")
    if families == {6}:
        return "ipv6:" + ",".join(f"[{a}]:{p}" for a, p in addresses), len(addresses)
    return "ipv4:" + ",".join(f"{a}:{p}" for a, p in addresses), len(addresses)
