"""Event-sourced workflows: aggregates whose behaviour decides on commands.

``behaviour`` holds the :class:`~tailrunner.workflows.behaviour.Behaviour`
protocol (nog's pure shape: ``new_state``, ``tell`` a command into events,
``advance`` a state by one event, and how an event travels as a journal
event: its protobuf full name and bytes, with :class:`ProtoCodec` doing it
for a set of message classes); ``aggregates`` holds
:class:`~tailrunner.workflows.aggregates.Aggregates`, which loads states
from the journal (cached by version), tells commands and appends their
events with ``expected_tail`` (``expect_new`` for a first write) under the
version modes ``NO_VC`` and ``RETRY_NO_VC``; the errors behaviours raise (``WrongState``,
``Uninitialized``, ``ArgumentNotIdempotent``, ``VersionConflict`` …) are in
:mod:`tailrunner.errors` under ``WorkflowError``. ``pingregistry`` is the
reference workflow (seed 003), with ``PingRegistry`` (its ``registry``
module) giving the admin's and the activities' multi-step commands.
"""
