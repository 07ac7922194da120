"""The parent operation in gRPC request metadata (as alis' ``x-alis-lro-parent``).

A service method that starts work for another operation sends that
operation's name under :data:`PARENT_METADATA_KEY`; the called method reads
it with :func:`parent_from_context` and creates its own operation as a child::

    async def Import(self, request, context):
        operation = await operations.create(parent=parent_from_context(context))
        ...
        # calls made for this operation carry it as their parent
        await stub.Copy(copy_request, metadata=with_parent(None, operation.name))

:func:`forward_parent` passes the incoming parent on unchanged, for a method
that works for its caller's operation without one of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from tailrunner.operations.names import parse_name

#: The request metadata key that names the parent operation (``operations/{id}``).
PARENT_METADATA_KEY = "x-tailrunner-operation-parent"


def parent_from_context(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The parent operation the call names, or ``None`` when it names none.

    :raises InvalidOperationName: the value is not an operation name (its
        field is :data:`PARENT_METADATA_KEY`).
    """
    for key, value in context.invocation_metadata() or ():
        if key == PARENT_METADATA_KEY:
            name = value.decode() if isinstance(value, bytes) else value
            parse_name(name, field=PARENT_METADATA_KEY)
            return name
    return None


def with_parent(metadata: Sequence[tuple[str, str]] | None, name: str) -> list[tuple[str, str]]:
    """``metadata`` for an outgoing call made for operation ``name``.

    A parent already in ``metadata`` is replaced: a call has one parent.

    :raises InvalidOperationName: ``name`` is not an operation name.
    """
    parse_name(name, field="name")
    kept = [(key, value) for key, value in metadata or () if key != PARENT_METADATA_KEY]
    return [*kept, (PARENT_METADATA_KEY, name)]


def forward_parent(context: grpc.aio.ServicerContext[Any, Any]) -> list[tuple[str, str]]:
    """The metadata that passes the incoming call's parent on ([] when it has none).

    :raises InvalidOperationName: the incoming value is not an operation name.
    """
    parent = parent_from_context(context)
    return [] if parent is None else [(PARENT_METADATA_KEY, parent)]
