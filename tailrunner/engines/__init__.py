"""Engines decide when activities run: lazy, eager and cron.

``base`` is :class:`Engine`, the machinery the three share (task table, round-robin
dispatch within capacity, timers, operators' controls in one order with the
runs' outcomes, shutdown); ``execute`` runs one task once and classifies
what the activity reported (the one place the activity contract is read);
``task`` is a task's record and state vocabulary; ``lazy``, ``eager`` and
``cron`` decide what wakes a sleeping task; ``retry`` is the activities'
backoff policy (the journal connection's is :mod:`tailrunner.reconnect`);
``options`` holds every setting of an engine, ``kinds`` their names, and
``factory`` builds an engine from its options.
"""
