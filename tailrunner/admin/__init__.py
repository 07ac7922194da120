"""The operator's side of a runner: the ``tailrunner.v1.Runner`` admin service and metrics.

- :class:`~tailrunner.admin.server.AdminServer` serves
  :class:`~tailrunner.admin.service.RunnerService` (list, inspect and control
  tasks) with gRPC health, reflection and bearer-token auth.
- :class:`~tailrunner.admin.client.AdminClient` is what ``tailrunner status``
  and ``tailrunner task …`` talk through.
- :class:`~tailrunner.admin.metrics.Metrics` and
  :func:`~tailrunner.admin.metrics.serve_metrics` give Prometheus ``/metrics``.
"""
