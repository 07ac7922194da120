"""The event journal: a gRPC service over pluggable stores.

``api`` is what engines and activities need of a journal (:class:`JournalApi`);
``client`` implements it over gRPC and ``received`` decodes events lazily as
they are read; ``service`` and ``server`` are the ``tailrunner.v1.Journal``
servicer and its process; ``store`` is the :class:`JournalStore` contract,
``memory`` and ``sqlite`` its backends, ``wire_format`` the stored wire form;
``hub`` and ``listeners`` fan out "aggregate changed" signals; ``lookup``
holds small questions more than one part asks.
"""
