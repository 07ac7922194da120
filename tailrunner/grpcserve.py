"""Start a gRPC service as every tailrunner server does: health, reflection, clear errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tailrunner.errors import InvalidArgument


async def start_grpc_server(
    *,
    listen: str,
    service_name: str,
    add_servicer: Callable[[grpc.aio.Server], None],
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """Bind ``listen``, serve the service with gRPC health and reflection, and start.

    Health reports SERVING for ``""`` and ``service_name`` once started.
    ``("grpc.so_reuseport", 0)`` is always set, so that two servers never
    share a port.

    :param add_servicer: adds the service to the server (the generated
        ``add_…Servicer_to_server`` with the servicer bound).
    :returns: the started server, its health servicer and the bound port.
    :raises InvalidArgument: naming ``listen`` when the address cannot be bound.
    """
    server = grpc.aio.server(
        interceptors=list(interceptors) or None,
        options=[("grpc.so_reuseport", 0), *options],
    )
    add_servicer(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise InvalidArgument(
            "listen", f"cannot listen on {listen}: the address is in use or not local"
        ) from exc
    await server.start()
    for service in ("", service_name):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, cast(int, port)
