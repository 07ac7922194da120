"""``Aggregates``: a behaviour's aggregates kept in the journal.

``load`` replays an aggregate's events into its state; ``tell`` loads,
lets the behaviour decide and appends the events with the journal's
``expected_tail`` (or, on an aggregate with no events yet, ``expect_new``),
so that two writers cannot both build on the same state.
The **version** of an aggregate is its head event's ULID (``None`` before its
first event).

Version modes, as nog's:

- a version (a ``ULID``, or ``None`` for "no events yet"): the aggregate must
  be at it, or :class:`~tailrunner.errors.VersionConflict` names both;
- ``NO_VC``: tell on whatever is current; a writer that appends between the
  load and the append still makes it a ``VersionConflict``;
- ``RETRY_NO_VC``: on such a conflict reload and tell again, at most
  ``retries`` times after a short jittered pause, then
  :class:`~tailrunner.errors.RetryLimit`.

The first append to a new aggregate is made with ``expect_new``, so of two
racing first tells one lands and the other conflicts like any tell whose
aggregate moved: ``VersionConflict``, or another attempt under ``RETRY_NO_VC``.

Every tell appends with a request id (the caller's, or a new one), so that
the journal appends it at most once; a caller that repeats a tell after a
timeout passes the same ``request_id``.

Loaded states are cached (a bounded LRU of each aggregate's newest known
version and state), so a tell on a hot aggregate reads only the events after
the cached version.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from contextlib import aclosing
from typing import Generic, TypeAlias, TypeVar
from uuid import UUID

import anyio
from google.protobuf.message import Message
from ulid import ULID

from tailrunner.errors import (
    AggregateTypeMismatch,
    NotFound,
    RetryLimit,
    TailMismatch,
    VersionConflict,
)
from tailrunner.journal.api import JournalApi
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.workflows.behaviour import Behaviour, encode

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E", bound=Message)


class VersionMode(enum.Enum):
    """A tell without a version of its own (see the module docstring)."""

    NO_VC = "no-vc"
    RETRY_NO_VC = "retry-no-vc"


NO_VC = VersionMode.NO_VC
RETRY_NO_VC = VersionMode.RETRY_NO_VC

#: What ``tell`` is told against: a version, or a mode.
Version: TypeAlias = ULID | VersionMode | None

DEFAULT_CACHE_SIZE = 1024
DEFAULT_RETRIES = 5
#: The first retry's pause; each retry doubles it, jittered by ±50 %.
DEFAULT_PAUSE = 0.02


class Aggregates(Generic[S, C, E]):
    """The aggregates of one type, each replayed through ``behaviour``."""

    def __init__(
        self,
        journal: JournalApi,
        behaviour: Behaviour[S, C, E],
        aggregate_type: str,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        retries: int = DEFAULT_RETRIES,
        pause: float = DEFAULT_PAUSE,
    ) -> None:
        """:param cache_size: how many aggregates' states are kept (LRU).
        :param retries: how many times ``RETRY_NO_VC`` tells again on a conflict.
        :param pause: the first retry's pause in seconds (doubled per retry, jittered).
        """
        self._journal = journal
        self._behaviour = behaviour
        self._type = aggregate_type
        self._cache_size = cache_size
        self._retries = retries
        self._pause = pause
        # id -> (version, state): the newest one seen. States are immutable,
        # so handing out the cached object is safe.
        self._cache: OrderedDict[UUID, tuple[ULID, S]] = OrderedDict()

    @property
    def aggregate_type(self) -> str:
        return self._type

    def ref(self, id: UUID) -> AggregateRef:
        return AggregateRef(type=self._type, id=id)

    async def load(self, id: UUID, *, missing_ok: bool = True) -> tuple[S, ULID | None]:
        """The aggregate's state and version (``None`` when it has no events).

        :param missing_ok: with ``False``, an aggregate without events is an error.
        :raises NotFound: ``missing_ok`` is false and the aggregate has no events.
        :raises AggregateTypeMismatch: the id is an aggregate of another type.
        :raises JournalUnavailable: the journal cannot be reached.
        """
        cached = self._cache.get(id)
        if cached is None:
            state, version = self._behaviour.new_state(id), None
        else:
            version, state = cached
        async with aclosing(self._journal.events(id, after=version, watch=False)) as batches:
            async for batch in batches:
                for event in batch.events:
                    if event.aggregate_type != self._type:
                        raise AggregateTypeMismatch(
                            f"{event.aggregate}: is a {event.aggregate_type!r}, "
                            f"not a {self._type!r}"
                        )
                    state = self._behaviour.advance(
                        state, self._behaviour.decode(event.type, event.data), event.id
                    )
                    version = event.id
        if version is None:
            if not missing_ok:
                raise NotFound(str(self.ref(id)))
            return state, None
        self._remember(id, version, state)
        return state, version

    async def tell(
        self,
        id: UUID,
        command: C,
        version: Version = NO_VC,
        *,
        request_id: str | None = None,
    ) -> ULID | None:
        """Tell ``command`` to the aggregate; its version afterwards.

        A command that yields no events appends nothing and returns the
        current version.

        :param request_id: makes the tell safe to repeat (after a timeout, or
            a crash of the caller): the journal appends nothing for a repeat
            of an append with this id to this aggregate, and returns the first
            one's result, whose tail this returns. Without it, each tell
            appends with a new request id of its own.
        :raises VersionConflict: the aggregate is not at ``version`` (or, with
            ``NO_VC``, another writer appended first); names both versions.
        :raises RetryLimit: ``RETRY_NO_VC`` conflicted on every attempt.
        :raises CommandRefused: (a subclass) the behaviour refused the command.
        :raises JournalUnavailable: the journal cannot be reached.
        """
        # The same id for every attempt: a conflicting attempt appended nothing,
        # so the journal has no result to repeat for it.
        request = request_id if request_id is not None else str(ULID())
        attempt = 0
        while True:
            state, head = await self.load(id)
            if not isinstance(version, VersionMode) and version != head:
                raise VersionConflict(str(self.ref(id)), version, head)
            events = self._behaviour.tell(state, command)
            if not events:
                return head
            new = [
                NewEvent(type=self._behaviour.event_type(event), data=encode(event))
                for event in events
            ]
            try:
                result = await self._journal.append(
                    self.ref(id),
                    new,
                    expected_tail=head,
                    expect_new=head is None,
                    request_id=request,
                )
            except TailMismatch as exc:
                # Another writer appended after our load; our cached state is stale
                # but still a valid prefix, so the next load only reads what is new.
                if version is not RETRY_NO_VC:
                    raise VersionConflict(str(self.ref(id)), head, exc.actual) from exc
                attempt += 1
                if attempt > self._retries:
                    raise RetryLimit(str(self.ref(id)), attempt) from exc
                await anyio.sleep(self._pause * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
                continue
            if request_id is not None:
                # Perhaps a repeat: the journal's result is then the first
                # append's, whose events need not be the ones told here. The
                # next load reads what was stored instead.
                return result.tail
            for event, event_id in zip(events, result.event_ids, strict=True):
                state = self._behaviour.advance(state, event, event_id)
            self._remember(id, result.tail, state)
            return result.tail

    def _remember(self, id: UUID, version: ULID, state: S) -> None:
        cached = self._cache.get(id)
        # A load that overlapped a tell may finish at an older version than
        # the tell cached; keep the newer (event ids grow along an aggregate).
        if cached is None or cached[0] <= version:
            self._cache[id] = (version, state)
        self._cache.move_to_end(id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
