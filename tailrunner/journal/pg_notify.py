"""Appends across journal servers: PostgreSQL LISTEN/NOTIFY for :class:`PostgresJournalStore`.

Every append sends one ``NOTIFY`` inside its transaction, so PostgreSQL
delivers it only if the append commits. All stores on one schema share one
channel (:func:`channel_name`). The payload is compact text (:func:`payload`):
the sending store's instance id, the aggregate's id and new head, and its
type last (it may hold spaces). A payload that would pass PostgreSQL's limit
(8000 bytes) becomes a ``resync``: the receivers re-check everything.

Each store keeps one dedicated LISTEN connection (:class:`NotifyListener`).
It skips the notifications its own store sent (that store already told its
listeners) and coalesces the notifications of one network read: several for
one aggregate become one with the newest head. When that connection is lost
it reconnects with :class:`~tailrunner.reconnect.ReconnectPolicy` backoff and
then makes every reader resync: notifications sent while it was away are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from uuid import UUID

import psycopg
import structlog
from psycopg import sql
from psycopg.rows import TupleRow
from ulid import ULID

from tailrunner.journal.listeners import Listeners
from tailrunner.model import AggregateRef
from tailrunner.reconnect import ReconnectPolicy
from tailrunner.sql.postgres import reason

log = structlog.get_logger(__name__)

#: PostgreSQL's longest identifier (``NAMEDATALEN - 1`` bytes): a channel name is one.
MAX_CHANNEL_LENGTH = 63
#: PostgreSQL refuses a payload of 8000 bytes or more; we stay well below.
MAX_PAYLOAD = 7999
_PREFIX = "tailrunner_journal_"
_VERSION = "v1"
_RESYNC = "resync"

#: Seconds between pings of an idle LISTEN connection (a silent network is noticed).
DEFAULT_PING_INTERVAL = 30.0


def channel_name(schema: str) -> str:
    """The channel of ``schema``'s appends: ``tailrunner_journal_<schema>``, at most 63 bytes.

    A schema too long for that is replaced by a hash of it, so the name is
    never cut short by PostgreSQL (two long schemas with one prefix would
    then share a channel).
    """
    name = _PREFIX + schema
    if len(name.encode()) <= MAX_CHANNEL_LENGTH:
        return name
    return _PREFIX + hashlib.sha256(schema.encode()).hexdigest()[:32]


def payload(instance: str, aggregate: AggregateRef, head: ULID) -> str:
    """The notification of one append: ``v1 <instance> <id> <head> <type>``, bounded.

    :returns: that, or ``resync <instance>`` when it would pass :data:`MAX_PAYLOAD` bytes.
    """
    text = f"{_VERSION} {instance} {aggregate.id.hex} {head} {aggregate.type}"
    if len(text.encode()) > MAX_PAYLOAD:
        return f"{_RESYNC} {instance}"
    return text


def parse(text: str) -> tuple[str, AggregateRef | None, ULID | None]:
    """The sender's instance id, and the aggregate and head (``None`` for a resync).

    :raises ValueError: ``text`` is not a payload of :func:`payload`.
    """
    if text.startswith(_RESYNC + " "):
        return text[len(_RESYNC) + 1 :], None, None
    version, instance, raw_id, raw_head, type_ = text.split(" ", 4)
    if version != _VERSION:
        raise ValueError(f"unknown notification version {version!r}")
    return instance, AggregateRef(type=type_, id=UUID(hex=raw_id)), ULID.from_str(raw_head)


class NotifyListener:
    """The LISTEN connection of one store: appends of other stores to its listeners.

    :meth:`start` runs it as a task on the running loop; :meth:`aclose` stops it.
    """

    def __init__(
        self,
        url: str,
        schema: str,
        instance: str,
        listeners: Listeners,
        *,
        name: str,
        connect_timeout: int,
        policy: ReconnectPolicy | None = None,
        ping_interval: float = DEFAULT_PING_INTERVAL,
    ) -> None:
        """:param instance: the own store's id: its notifications are skipped.
        :param name: the store's name for logs (no password).
        """
        self._url = url
        self._channel = channel_name(schema)
        self._instance = instance
        self._listeners = listeners
        self._name = name
        self._connect_timeout = connect_timeout
        self._policy = policy or ReconnectPolicy()
        self._ping_interval = ping_interval
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[UUID, tuple[AggregateRef, ULID]] = {}
        self._flush_scheduled = False
        self._listening = asyncio.Event()
        #: The backend pid of the current LISTEN connection (for tests and status).
        self.backend_pid: int | None = None
        #: How many times the connection was (re)established.
        self.connections = 0

    @property
    def channel(self) -> str:
        """The channel it listens on."""
        return self._channel

    async def start(self, ready_within: float) -> None:
        """Start listening; returns once the first LISTEN is in place, or after ``ready_within`` s.

        Returning after LISTEN holds means no append committed from now on is
        missed. After that time it keeps trying in the background, and its
        first connection then makes every reader resync.
        """
        self._task = asyncio.get_running_loop().create_task(self._run(), name="journal-listen")
        waiter = asyncio.ensure_future(self._listening.wait())
        await asyncio.wait(
            {waiter, self._task}, timeout=ready_within, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if not self._listening.is_set():
            log.warning("listen_not_ready", store=self._name, seconds=ready_within)

    async def wait_listening(self) -> None:
        """Wait until a LISTEN connection is in place (again)."""
        await self._listening.wait()

    async def aclose(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=self._connect_timeout
                )
            except psycopg.Error as exc:
                attempt += 1
                log.warning("listen_connect_failed", store=self._name, error=reason(exc))
                await asyncio.sleep(self._policy.delay(attempt))
                continue
            try:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                self.backend_pid = conn.info.backend_pid
                self.connections += 1
                if self.connections > 1 or attempt > 0:
                    # Appends while no LISTEN was in place are unknown: re-check all.
                    log.info("listen_reconnected", store=self._name)
                    self._listeners.resync()
                attempt = 0
                self._listening.set()
                await self._listen(conn)
            except psycopg.Error as exc:
                self._listening.clear()
                attempt += 1
                log.warning("listen_lost", store=self._name, error=reason(exc))
                await asyncio.sleep(self._policy.delay(attempt))
            except Exception:
                # A bug must not end cross-server signals for good: log, start over.
                self._listening.clear()
                attempt += 1
                log.exception("listen_failed", store=self._name)
                await asyncio.sleep(self._policy.delay(attempt))
            finally:
                self._listening.clear()
                await asyncio.shield(conn.close())

    async def _listen(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            async for notify in conn.notifies(timeout=self._ping_interval):
                self._receive(notify.payload, loop.call_soon)
            # Idle for a while: a round trip tells a dead connection from a quiet one.
            await conn.execute("SELECT 1")

    def _receive(self, text: str, call_soon: Callable[[Callable[[], None]], object]) -> None:
        try:
            instance, aggregate, head = parse(text)
        except ValueError:
            log.warning("notification_unreadable", store=self._name, payload=text[:200])
            return
        if instance == self._instance:
            return
        if aggregate is None or head is None:
            self._pending.clear()
            self._listeners.resync()
            return
        self._pending[aggregate.id] = (aggregate, head)
        if not self._flush_scheduled:
            # Runs once the notifications of this read are all taken: one
            # call per aggregate, with its newest head.
            self._flush_scheduled = True
            call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for aggregate, head in pending.values():
            self._listeners.notify(aggregate, head)
