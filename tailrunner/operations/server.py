"""``OperationsServer``: the Operations and Workflows services in a process of their own.

The journal server carries both by default. An operator who wants them
apart (other limits, another network, more of them behind a balancer) runs
``tailrunner ops serve --journal ADDR``: the same services over a client of
that journal. Waits stay pushed: they watch the journal through the client.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from tailrunner.grpcserve import GrpcServer
from tailrunner.journal.api import JournalApi
from tailrunner.journal.server import HostedService, ServiceFactory
from tailrunner.operations.pingregistry import workflows_service
from tailrunner.operations.service import DEFAULT_MAX_WAIT, SERVICE_NAME, operations_service
from tailrunner.security import OPEN, ServerSecurity

#: Where ``tailrunner ops serve`` listens by default (the journal's port + 2).
DEFAULT_LISTEN = "127.0.0.1:7742"


class OperationsServer(GrpcServer):
    """``google.longrunning.Operations`` (and ``tailrunner.v1.Workflows``) over ``journal``."""

    kind = "operations"
    service_name = SERVICE_NAME

    def __init__(
        self,
        journal: JournalApi,
        *,
        listen: str = DEFAULT_LISTEN,
        services: Sequence[ServiceFactory] | None = None,
        max_wait: float = DEFAULT_MAX_WAIT,
        security: ServerSecurity = OPEN,
    ) -> None:
        """:param journal: where the operations are (a client of the journal server).
        :param services: what to serve; by default Operations and Workflows.
        :param max_wait: the longest ``WaitOperation`` of the default Operations service.
        :param security: TLS and tokens (health stays open).
        :raises InvalidArgument: ``listen`` is not ``HOST:PORT`` (field ``listen``),
            or it is open to other machines without TLS and tokens (field ``insecure``).
        """
        super().__init__(listen=listen, security=security)
        factories = [operations_service(), workflows_service()] if services is None else services
        self._hosted: list[HostedService] = [factory(journal) for factory in factories]

    def _add_services(self, server: grpc.aio.Server) -> None:
        for hosted in self._hosted:
            hosted.add_to_server(server)

    def _service_names(self) -> tuple[str, ...]:
        names = [n for hosted in self._hosted for n in hosted.service_names]
        return (self.service_name, *(n for n in names if n != self.service_name))
