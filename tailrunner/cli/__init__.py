"""The ``tailrunner`` command line, one module per command group.

``main`` is the entry point and gathers the groups; ``run`` starts a runner
from its config; ``journal`` serves and reads the journal (``journal serve``,
``append``, ``events``, ``aggregates``); ``admin`` talks to a running
runner (``status``, ``task …``, ``runs``); ``plugins`` lists what is
installed; ``demo`` runs everything in one process; ``terminal`` makes text
from the journal or an activity safe to print.
"""
