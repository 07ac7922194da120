"""AIP-151 long-running operations, stored as event-sourced aggregates in the journal.

:class:`Operations` is the library for service authors (seed 001's, on the
journal, and push-based): ``create``, ``get``, ``update_metadata``,
``set_successful``, ``set_failed``, ``request_cancel``, ``set_cancelled``,
``delete``; ``wait`` and ``batch_wait`` (woken by the journal, never
polling), ``until_cancel_requested`` for the code doing the work;
``list_children`` and ``traverse`` for operations started for others
(:mod:`~tailrunner.operations.propagation` carries the parent in gRPC
metadata). The errors are :mod:`tailrunner.errors`' ``OperationError`` tree.

Modules: ``names`` (``operations/{id}`` and aggregate ids), ``state`` (the
state vocabulary and ``to_operation``), ``behaviour`` (commands, tell and
advance), ``children`` (the per-parent index and page tokens), ``messages``
(packing ``Any``, an exception as a ``google.rpc.Status``), ``propagation``
(the parent metadata key), ``manager`` (``Operations``).
"""

from tailrunner.operations.manager import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    OPERATION_TYPE,
    MetadataCallback,
    OperationNode,
    Operations,
)
from tailrunner.operations.names import PREFIX
from tailrunner.operations.propagation import (
    PARENT_METADATA_KEY,
    forward_parent,
    parent_from_context,
    with_parent,
)
from tailrunner.operations.state import (
    FILTER_NAMES,
    Operation,
    OperationState,
    StateCode,
    to_operation,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "FILTER_NAMES",
    "MAX_PAGE_SIZE",
    "OPERATION_TYPE",
    "PARENT_METADATA_KEY",
    "PREFIX",
    "MetadataCallback",
    "Operation",
    "OperationNode",
    "OperationState",
    "Operations",
    "StateCode",
    "forward_parent",
    "parent_from_context",
    "to_operation",
    "with_parent",
]
