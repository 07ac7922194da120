"""Operation names (``operations/{id}``) and the aggregate ids they map to.

An operation's id is either

- a canonical UUID text (lower case, with hyphens: what ``str(uuid.uuid4())``
  gives), which *is* the aggregate id, so ``operations/{workflow uuid}``
  names the aggregate itself; or
- a caller's own id in AIP-122 style: 1 to 63 of ``[a-z0-9-]``, starting and
  ending with a letter or digit, mapped to an aggregate id by
  ``uuid5(OPERATION_NAMESPACE, id)``.

Each operation has one name: an upper-case UUID, or one without hyphens, is
refused rather than read as another spelling of the same id.
"""

from __future__ import annotations

import re
import uuid
from uuid import UUID

from tailrunner.errors import InvalidOperationName

#: Every operation name starts with this collection id.
PREFIX = "operations/"
#: Derives the aggregate id of an operation whose id is not a UUID.
OPERATION_NAMESPACE = UUID("3b0c5bd4-8f7e-4b7a-9d8e-6a1f1f0e0c51")
#: Derives the id of a parent's children index from the parent's aggregate id.
CHILDREN_NAMESPACE = UUID("a8f3e1c2-5d4b-4e6f-8a9b-0c1d2e3f4a5b")
#: The longest id a caller may choose (AIP-122).
MAX_ID_LENGTH = 63

_USER_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ALLOWED = (
    "expected operations/{id}, the id a UUID (lower case, with hyphens) or 1 to 63 "
    "of a-z, 0-9 and '-', starting and ending with a letter or digit"
)


def new_id() -> str:
    """A fresh operation id: a random UUID's text."""
    return str(uuid.uuid4())


def check_id(id: str, *, field: str = "id") -> UUID:
    """The aggregate id of the operation id ``id``.

    :param field: the argument that carried ``id``, for the error.
    :raises InvalidOperationName: ``id`` is neither a canonical UUID nor an AIP-122 id.
    """
    if _is_canonical_uuid(id):
        return UUID(id)
    if _USER_ID.fullmatch(id) is None:
        raise InvalidOperationName(id, _reason(id), field=field)
    return uuid.uuid5(OPERATION_NAMESPACE, id)


def parse_name(name: str, *, field: str = "name") -> UUID:
    """The aggregate id of the operation ``name`` (``operations/{id}``).

    :param field: the argument that carried ``name``, for the error.
    :raises InvalidOperationName: ``name`` is not ``operations/`` and a valid id.
    """
    if not isinstance(name, str) or not name.startswith(PREFIX):
        raise InvalidOperationName(str(name), _ALLOWED, field=field)
    id = name.removeprefix(PREFIX)
    if _is_canonical_uuid(id):
        return UUID(id)
    if _USER_ID.fullmatch(id) is None:
        raise InvalidOperationName(name, _reason(id), field=field)
    return uuid.uuid5(OPERATION_NAMESPACE, id)


def operation_name(id: str) -> str:
    """The resource name of the operation with id ``id`` (not checked: see :func:`check_id`)."""
    return PREFIX + id


def children_index_id(parent: UUID) -> UUID:
    """The id of the ``operation-children`` aggregate of the operation whose aggregate id
    is ``parent``."""
    return uuid.uuid5(CHILDREN_NAMESPACE, str(parent))


def _is_canonical_uuid(id: str) -> bool:
    if len(id) != 36:
        return False
    try:
        return str(UUID(id)) == id
    except ValueError:
        return False


def _reason(id: str) -> str:
    if not id:
        return f"the id is empty; {_ALLOWED}"
    if len(id) > MAX_ID_LENGTH:
        return f"the id is {len(id)} characters long; {_ALLOWED}"
    return _ALLOWED
