"""The replicas a client spreads its calls over, when there is more than one.

`Replicas` takes them in turn: one that refused a connection or answered 503 / UNAVAILABLE sits out
`cooldown_seconds` (when every one is out, all are tried). One that answered 429 / RESOURCE_EXHAUSTED is
busy for its Retry-After (else `busy_seconds`): the others are preferred meanwhile, and a request sent
again after a refusal goes to a replica it has not tried yet (`pick(tried)`), so that concurrent chunks of
one call, which move the turn on between a chunk's refusal and its failover, never send it back to the
refusing one while another is free.

HTTP (`HttpEndpoints`, a `Replicas` of base URLs): one URL, several (a list, or one string with commas), or `dns:///host:port`,
meaning every address that name resolves to (a Kubernetes headless Service answers with one address per
ready pod), over plain HTTP (a certificate names a host, not each pod's address: with TLS, use gRPC's
dns:/// or list https:// URLs). Names are resolved again every `refresh_seconds`, and at once after an
address failed.

gRPC (`grpc_targets`): one target (`host:port`, `dns:///host:port`) is one channel, which gRPC balances by
itself with its `round_robin` policy over every address the name resolves to; several are one channel
each, taken as `Replicas` (gRPC could not tell a call sent again which replica refused it).
"""

from __future__ import annotations

import asyncio
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


class Replicas:
    """Replicas (a client's names for them: base URLs, gRPC targets), taken in turn. Thread-safe."""

    def __init__(self, entries: Sequence[str] = (), cooldown_seconds: float = 5.0, busy_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.cooldown_seconds = cooldown_seconds
        self.busy_seconds = busy_seconds
        self._clock = clock  # a test's stand-in shows the back-offs without waiting for them
        self._fixed: list[str] = list(entries)
        self._out_until: dict[str, float] = {}  # refused a connection or answered 503
        self._busy_until: dict[str, float] = {}  # answered 429
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def _entries(self) -> list[str]:
        return self._fixed

    def __len__(self) -> int:
        return len(self._entries())

    def _next(self, tried: set[str] | None) -> str:
        with self._lock:
            urls = self._entries()
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
            return max(1, sum(1 for url in self._entries() if self._out_until.get(url, _NEVER) <= now))

    def pick(self, tried: set[str] | None = None) -> str:
        """The next replica: a live one, one not in `tried` (the replicas one request was sent to since it
        last had to repeat one; updated here) and not busy, when there is one."""
        return self._next(tried)

    def failed(self, url: str) -> None:
        """`url` refused a connection or answered 503 / UNAVAILABLE: leave it out a while."""
        with self._lock:
            self._out_until[url] = self._clock() + self.cooldown_seconds

    def busy(self, url: str, retry_after: float | None) -> None:
        """`url` answered 429: prefer the others for its Retry-After (else `busy_seconds`, at most
        `cooldown_seconds`). It stays live: when every replica is busy, the call waits for its backoff."""
        with self._lock:
            wait = self.busy_seconds if retry_after is None else retry_after
            self._busy_until[url] = self._clock() + min(wait, self.cooldown_seconds)


class HttpEndpoints(Replicas):
    """The base URLs of an HTTP client's replicas, taken in turn. Thread-safe."""

    def __init__(self, spec: str | Sequence[str], refresh_seconds: float = 30.0, cooldown_seconds: float = 5.0,
                 busy_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic):
        super().__init__((), cooldown_seconds, busy_seconds, clock)
        self.refresh_seconds = refresh_seconds
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

    def _entries(self) -> list[str]:
        return self._fixed + self._resolved

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

    def pick(self, tried: set[str] | None = None) -> str:
        """The next replica's base URL (as `Replicas.pick`), resolving the names first when due."""
        if self._stale():
            self.refresh()
        return self._next(tried)

    async def apick(self, tried: set[str] | None = None) -> str:
        if self._stale():
            await self.arefresh()
        return self._next(tried)

    def failed(self, url: str) -> None:
        """As `Replicas.failed`, and look the names up again."""
        super().failed(url)
        with self._lock:
            if self._names:
                self._resolved_at = _NEVER


def grpc_targets(spec: str | Sequence[str]) -> list[str]:
    """The gRPC targets of `spec`, one channel each. A single entry is passed as it is ("host:port",
    "dns:///host:port", or any target gRPC accepts); several must each be host:port or dns:///host:port."""
    entries = split_endpoints(spec)
    if len(entries) > 1:
        for entry in entries:
            _host_port(entry.removeprefix(DNS))
    return entries
