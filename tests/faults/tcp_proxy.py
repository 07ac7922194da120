"""``TcpProxy``: a TCP proxy for tests that can cut, black-hole and heal its connections.

It listens on ``127.0.0.1`` (a free port) and forwards every connection to
a target ``host:port``. It runs its own asyncio loop in a thread of its
own, so it never depends on the test's event loop (nor blocks it for
longer than a command takes), and a test on any loop or none can use it.

- :meth:`TcpProxy.cut` resets every open connection: both sockets get
  ``SO_LINGER 0`` and are closed, so each peer sees a reset (RST), not an
  orderly end. New connections are accepted as before.
- :meth:`TcpProxy.blackhole` is a silent partition: the open sockets stay
  open but no byte is read from them any more (what the peers send stays
  in the kernel's buffers, as on a link that drops packets while TCP
  retransmits), and new connections are accepted and held without a byte
  forwarded. Peers see no error, only silence.
- :meth:`TcpProxy.heal` ends the black hole: reading resumes, so what was
  sent meanwhile arrives late, as after a partition TCP outlived.
- :meth:`TcpProxy.close` stops listening and resets everything left.

The commands are synchronous and return once the proxy's loop has done
them: after :meth:`blackhole` returns, no further byte is forwarded.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

#: Seconds a command waits for the proxy's loop.
_COMMAND_TIMEOUT = 10.0
#: Bytes buffered towards a slow peer before the other side stops being read.
_HIGH_WATER = 256 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyStats:
    """What the proxy has seen so far."""

    #: Connections accepted.
    accepted: int
    #: Connections open now.
    open: int
    #: Connections reset by :meth:`TcpProxy.cut` (each counts once).
    reset: int
    #: Times :meth:`TcpProxy.cut` was called.
    cuts: int
    #: Times :meth:`TcpProxy.blackhole` was called.
    blackholes: int


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; what it reads goes to its peer side."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self._reading = True
        self._peer_full = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        self.update_reading()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None or peer.transport.is_closing():
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
        return True  # half-closed: the other direction may go on

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.lost()

    # The peer's write buffer filled up: stop reading here until it drains.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer._peer_full = True
            self.peer.update_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer._peer_full = False
            self.peer.update_reading()

    def update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        want = self.link.proxy_flowing() and self.peer is not None and not self._peer_full
        if want and not self._reading:
            transport.resume_reading()
        elif not want and self._reading:
            transport.pause_reading()
        self._reading = want

    def reset(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: close() sends RST and drops what is still buffered.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


class _Link:
    """A client connection and its upstream connection."""

    def __init__(self, proxy: TcpProxy) -> None:
        self._proxy = proxy
        self.client = _Side(self)
        self.upstream: _Side | None = None
        self.closed = False
        #: Silent for good (see :meth:`TcpProxy.stall_open`), whatever the proxy does.
        self.stalled = False

    def proxy_flowing(self) -> bool:
        return self._proxy._flowing and not self.stalled

    def update_reading(self) -> None:
        self.client.update_reading()
        if self.upstream is not None:
            self.upstream.update_reading()

    def reset(self) -> None:
        self.closed = True
        self.client.reset()
        if self.upstream is not None:
            self.upstream.reset()
        self._proxy._links.discard(self)

    def lost(self) -> None:
        # Either side gone: the connection is over; reset the other side too.
        if not self.closed:
            self.reset()


class TcpProxy:
    """A TCP proxy from ``127.0.0.1:<port>`` to ``target_host:target_port`` (see the module).

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._flowing = True
        self._links: set[_Link] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self._accepted = 0
        self._reset = 0
        self._cuts = 0
        self._blackholes = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="tcp-proxy", daemon=True)
        self._thread.start()
        self._started.wait(_COMMAND_TIMEOUT)
        if self._server is None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_COMMAND_TIMEOUT)
            raise RuntimeError("the proxy did not start listening")
        self.port: int = self._server.sockets[0].getsockname()[1]

    # -- commands (any thread) --------------------------------------------------

    def cut(self) -> int:
        """Reset every open connection (RST both ways); go on accepting. How many were reset."""

        def cut() -> int:
            links = list(self._links)
            for link in links:
                link.reset()
            self._reset += len(links)
            self._cuts += 1
            return len(links)

        return self._call(cut)

    def blackhole(self) -> None:
        """Stop forwarding: the open sockets stay open and silent, new ones are held."""

        def blackhole() -> None:
            self._flowing = False
            self._blackholes += 1
            for link in list(self._links):
                link.update_reading()

        self._call(blackhole)

    def stall_open(self) -> int:
        """Silence the connections open now, for good; new ones flow. How many were stalled.

        What a NAT or firewall that lost its state does: the peers see no FIN
        and no RST, only silence, while a new connection works.
        """

        def stall() -> int:
            links = list(self._links)
            for link in links:
                link.stalled = True
                link.update_reading()
            self._blackholes += 1
            return len(links)

        return self._call(stall)

    def heal(self) -> None:
        """Forward again, the held bytes and connections first."""

        def heal() -> None:
            self._flowing = True
            for link in list(self._links):
                link.update_reading()

        self._call(heal)

    @property
    def stats(self) -> ProxyStats:
        def stats() -> ProxyStats:
            return ProxyStats(
                accepted=self._accepted,
                open=len(self._links),
                reset=self._reset,
                cuts=self._cuts,
                blackholes=self._blackholes,
            )

        return self._call(stats)

    def close(self) -> None:
        """Stop listening, reset the connections left, and end the proxy's thread."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(_COMMAND_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_COMMAND_TIMEOUT)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the proxy's thread -------------------------------------------------------

    def _call(self, func: Callable[[], T]) -> T:
        async def run() -> T:
            return func()

        return self._submit(run())

    def _submit(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("the proxy is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_COMMAND_TIMEOUT)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                self._loop.create_server(self._accept, "127.0.0.1", 0)
            )
        finally:
            self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _accept(self) -> _Side:
        link = _Link(self)
        self._links.add(link)
        self._accepted += 1
        task = self._loop.create_task(self._connect_upstream(link))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return link.client

    async def _connect_upstream(self, link: _Link) -> None:
        upstream = _Side(link)
        try:
            await self._loop.create_connection(lambda: upstream, *self.target)
        except OSError:
            link.reset()
            return
        if link.closed:
            upstream.reset()
            return
        link.upstream = upstream
        upstream.peer = link.client
        link.client.peer = upstream
        link.update_reading()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._connecting):
            task.cancel()
        for link in list(self._links):
            link.reset()
        await self._server.wait_closed()


def proxy_for_url(url: str) -> TcpProxy:
    """A proxy to the host and port of a connection URL (``postgresql://…``)."""
    target = urlsplit(url)
    return TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)


def through(proxy: TcpProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    if parts.password:
        user = f"{parts.username}:{parts.password}@"
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
