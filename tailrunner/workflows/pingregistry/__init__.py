"""Ping-registry, the reference workflow (nog's pingregistrywf, seed 003).

``state`` holds the workflow's :class:`~.state.State` (its state codes from
uninitialized to terminated, the pings and the summary) and ``new_state``;
``behaviour`` its commands (init, append-ping, post-summary, abort-expired,
the commit steps commit and end, delete) with the pure ``tell`` and
``advance``; ``index`` the per-registry index aggregate that records which
workflows were started, completed and deleted; ``errors`` the refusals
(``Uninitialized``, ``ArgumentNotIdempotent``, ``WrongState``,
``UnknownWorkflow``); ``deadlines`` converts deadlines between commands and
events. The events are the protobuf messages of
``proto/tailrunner/v1/workflows.proto``. Nothing here does I/O.
"""
