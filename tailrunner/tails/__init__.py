"""Tail stores: where each (activity, aggregate) remembers how far it got.

``store`` is the :class:`TailStore` contract and its records (a task's tail,
state and backoff; each run's record); ``memory``, ``sqlite`` (the embedded
default) and ``postgres`` are its backends, the two SQL ones built on
:mod:`tailrunner.sql`; ``open`` opens one from a URL.
"""
