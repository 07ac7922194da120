"""The SQL layer the SQLite and PostgreSQL stores share: one place for a schema change.

``dialect`` says how each database spells a statement (types, qualified
table names, paramstyle ``?``/``%s``) and renders a template written once;
``codecs`` maps records to parameters and rows back (``TailRows``) through a
``Codec`` of how the database stores UUIDs, times and flags; ``schema``
holds the tail stores' tables and their append-only migrations as
templates, ``statements`` renders their statements per dialect, ``query``
builds WHERE clauses (the status query), ``migrate`` runs version-table
migrations under each store's exclusive lock, and ``tail_store`` is the
base of both tail stores (their reads, the shape of their transaction). The
stores keep only their driver: connections, locks, error mapping. A PostgreSQL *journal*
store plugs in the same way: its tables and migrations in ``schema`` (its
version table's name added to ``dialect.TABLES``), its statements rendered
with ``dialect.POSTGRESQL``, its ids through the same ``Codec``, and
:func:`~tailrunner.sql.migrate.migrate` with the psycopg
``MigrationConnection`` that the PostgreSQL tail store already has.
"""
