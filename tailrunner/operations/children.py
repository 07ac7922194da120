"""The children of an operation: a per-parent index aggregate, and its page tokens.

Each parent operation has an ``operation-children`` aggregate (its id
:func:`~tailrunner.operations.names.children_index_id` of the parent's) whose
``ChildAdded`` events list the children in the order they were created.
Creating a child records it here first, then creates the child; so an entry
may name a child that was never created (the create failed or crashed), or
one that another parent's create won: readers keep only the children that
exist and name this parent. Adding a child twice records it once, so a
create may be retried.

A page token is the offset of the next entry in that append-only list, with
a fingerprint of the parent: children added between pages land after every
offset already given out, so a listing neither skips nor repeats one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass, replace
from uuid import UUID

from ulid import ULID

from tailrunner.errors import InvalidPageToken
from tailrunner.operations.names import parse_name
from tailrunner.proto.v1 import operations_pb2 as pb
from tailrunner.workflows.behaviour import ProtoCodec

#: The aggregate type of a parent's children index.
CHILDREN_TYPE = "operation-children"

_TOKEN_VERSION = 1
# version, the parent's fingerprint, the offset of the next entry.
_TOKEN = struct.Struct(">B8sQ")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildrenState:
    """The children a parent's index recorded, oldest first (some may not exist)."""

    id: UUID
    children: tuple[str, ...] = ()
    known: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class AddChild:
    """Record the child operation ``name`` (``operations/{id}``); nothing if recorded."""

    name: str


def new_children_state(id: UUID) -> ChildrenState:
    """The index of a parent without children."""
    return ChildrenState(id=id)


def tell_children(state: ChildrenState, command: AddChild) -> list[pb.ChildAdded]:
    """The events ``command`` yields: none for a child already recorded.

    :raises InvalidOperationName: the child's name is malformed.
    """
    parse_name(command.name, field="child")
    if command.name in state.known:
        return []
    return [pb.ChildAdded(name=command.name)]


def advance_children(state: ChildrenState, event: pb.ChildAdded, event_id: ULID) -> ChildrenState:
    """The index after ``event``; ``state`` is unchanged."""
    return replace(state, children=(*state.children, event.name), known=state.known | {event.name})


class ChildrenBehaviour(ProtoCodec[pb.ChildAdded]):
    """A children index as a :class:`~tailrunner.workflows.behaviour.Behaviour`."""

    def __init__(self) -> None:
        super().__init__(pb.ChildAdded)

    def new_state(self, id: UUID) -> ChildrenState:
        """:func:`new_children_state`."""
        return new_children_state(id)

    def tell(self, state: ChildrenState, command: AddChild) -> list[pb.ChildAdded]:
        """:func:`tell_children`."""
        return tell_children(state, command)

    def advance(self, state: ChildrenState, event: pb.ChildAdded, event_id: ULID) -> ChildrenState:
        """:func:`advance_children`."""
        return advance_children(state, event, event_id)


def encode_page_token(parent: UUID, offset: int) -> str:
    """The opaque token of the page of ``parent``'s children that starts at ``offset``."""
    raw = _TOKEN.pack(_TOKEN_VERSION, _fingerprint(parent), offset)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_page_token(parent_name: str, parent: UUID, token: str, entries: int) -> int:
    """The offset ``token`` holds; ``0`` for the empty token (the first page).

    :param entries: how many entries the parent's index has now (a token
        never points past them: the index only grows).
    :raises InvalidPageToken: the token is damaged, of another parent, or points past the end.
    """
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, fingerprint, offset = _TOKEN.unpack(raw)
    except (binascii.Error, ValueError, struct.error):
        raise InvalidPageToken(parent_name, token, "not a token tailrunner gave out") from None
    if version != _TOKEN_VERSION:
        raise InvalidPageToken(parent_name, token, f"token version {version} is not known")
    if fingerprint != _fingerprint(parent):
        raise InvalidPageToken(parent_name, token, "it lists another operation's children")
    if offset > entries:
        raise InvalidPageToken(parent_name, token, f"offset {offset} is past the end")
    return int(offset)


def _fingerprint(parent: UUID) -> bytes:
    return hashlib.sha256(b"operation-children:" + parent.bytes).digest()[:8]
