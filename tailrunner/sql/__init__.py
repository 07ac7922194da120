"""The SQL layer the SQLite and PostgreSQL stores share: one place for a schema change.

``dialect`` says how each database spells a statement (types, qualified
table names, paramstyle ``?``/``%s``) and renders a template written once;
``schema`` holds the tail stores' tables and their append-only migrations as
such templates, ``statements`` renders their statements per dialect,
``codecs`` maps records to parameters and rows back (``TailRows``) through a
``Codec`` of how each database stores UUIDs, times and flags, ``query``
builds WHERE clauses (the status query), ``migrate`` runs version-table
migrations under a store's exclusive lock through a ``MigrationConnection``
that ``sqlite`` and ``postgres`` give for their drivers, and ``tail_store``
is the base class of both tail stores (their reads, the shape of their
transaction); the stores keep only their driver: connections, locks, error
mapping. A PostgreSQL *journal* store plugs in the same way: its tables and
migrations as templates in ``schema`` (its version table's name added to
``dialect.TABLES``), its statements rendered with ``dialect.POSTGRESQL``,
its ids and times through ``POSTGRESQL.codec``, and ``migrate.migrate`` run
with ``postgres.PostgresMigration`` under an advisory-lock key of its own.
"""
