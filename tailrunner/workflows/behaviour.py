"""The behaviour of an aggregate: nog's pure shape, testable without I/O.

A behaviour decides (``tell``: a command against a state gives events, or a
typed refusal) and remembers (``advance``: a state and one event, with its
journal id, give the next state). Neither does I/O, so given/when/then tests need no journal.
Events are protobuf messages; the behaviour also says how one travels in the
journal: its type name (the message's full name) and its serialised bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar
from uuid import UUID

from google.protobuf.message import Message
from ulid import ULID

from tailrunner.errors import ArgumentNotIdempotent, InvalidArgument

S = TypeVar("S")
C_contra = TypeVar("C_contra", contravariant=True)
E = TypeVar("E", bound=Message)


class Behaviour(Protocol[S, C_contra, E]):
    """What an aggregate type decides and how it replays its events.

    States must be immutable (frozen dataclasses, tuples): loaded states are
    cached and shared, and ``advance`` returns a new one.
    """

    def new_state(self, id: UUID) -> S:
        """The state of an aggregate that has no events yet."""
        ...

    def tell(self, state: S, command: C_contra) -> Sequence[E]:
        """The events that ``command`` adds to ``state``; none when it changes nothing.

        :raises CommandRefused: (a subclass) the command does not fit the
            state; the error names the state and what is wrong.
        """
        ...

    def advance(self, state: S, event: E, event_id: ULID) -> S:
        """The state after ``event``; ``state`` itself is left as it was.

        :param event_id: the event's id in the journal (a state may record it,
            as ping-registry does for each ping).
        """
        ...

    def event_type(self, event: E) -> str:
        """The journal event type that carries ``event``."""
        ...

    def decode(self, type: str, data: bytes) -> E:
        """The event a journal event of ``type`` carries in ``data``.

        :raises InvalidArgument: ``type`` is not one of this behaviour's events.
        """
        ...


class ProtoCodec(Generic[E]):
    """Events as protobuf messages, typed by their full name (``tailrunner.v1.Started``).

    Behaviours inherit from it (or delegate to it) for ``event_type`` and
    ``decode``.
    """

    def __init__(self, *messages: type[E]) -> None:
        """:param messages: every message class the behaviour's events use."""
        self._classes: dict[str, type[E]] = {m.DESCRIPTOR.full_name: m for m in messages}

    def event_type(self, event: E) -> str:
        """The message's full name, which the journal stores as the event type."""
        return event.DESCRIPTOR.full_name

    def decode(self, type: str, data: bytes) -> E:
        """Parse ``data`` as the message named ``type``.

        :raises InvalidArgument: ``type`` is none of the codec's messages.
        """
        try:
            message = self._classes[type]
        except KeyError:
            known = ", ".join(sorted(self._classes))
            raise InvalidArgument("type", f"event type {type!r} is not one of {known}") from None
        return message.FromString(data)


def encode(event: Message) -> bytes:
    """The bytes that carry ``event`` in the journal's ``data``."""
    return event.SerializeToString()


def check_idempotent(argument: str, recorded: object, given: object) -> None:
    """Refuse a repeated command whose ``argument`` has another value than the first time.

    :raises ArgumentNotIdempotent: ``given`` is not ``recorded``; names the argument.
    """
    if recorded != given:
        raise ArgumentNotIdempotent(argument, recorded=recorded, given=given)
