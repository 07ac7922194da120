"""``AdminServer``: the runner's admin address, serving ``tailrunner.v1.Runner``.

Beside the runner service it carries the gRPC health service (``SERVING`` for
``""`` and ``tailrunner.v1.Runner``) and server reflection, so that
``grpcurl`` and health probes work against it. With tokens, every call but
health's must carry ``authorization: Bearer <token>`` metadata: ``read``
tokens may list and show, ``write`` tokens may also control tasks
(:mod:`tailrunner.security.auth`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import grpc
import structlog

from tailrunner.admin.service import (
    DEFAULT_CONTROL_TIMEOUT,
    DEFAULT_LAG_TIMEOUT,
    RunnerService,
)
from tailrunner.engines.base import Engine
from tailrunner.grpcserve import GrpcServer
from tailrunner.journal.api import JournalApi
from tailrunner.proto.v1 import runner_pb2, runner_pb2_grpc
from tailrunner.security import OPEN, Role, ServerSecurity, Tokens
from tailrunner.tails.store import TailStore

if TYPE_CHECKING:
    from tailrunner.scaleout.membership import Membership

log = structlog.get_logger(__name__)

DEFAULT_ADMIN_LISTEN = "127.0.0.1:7741"
SERVICE_NAME: str = runner_pb2.DESCRIPTOR.services_by_name["Runner"].full_name


class AdminServer(GrpcServer):
    """The runner's admin service over gRPC, on one address.

    ::

        async with AdminServer(engine=runner.engine, tails=tails, journal=journal,
                               listen="127.0.0.1:0", token=token) as admin:
            print(admin.address)  # the bound port, not 0

    Start it on the event loop that runs the engine: the service reads and
    controls the engine's tasks directly.
    """

    kind = "admin"
    service_name = SERVICE_NAME

    def __init__(
        self,
        *,
        engine: Engine,
        tails: TailStore,
        journal: JournalApi,
        listen: str = DEFAULT_ADMIN_LISTEN,
        token: str | None = None,
        lag_timeout: float = DEFAULT_LAG_TIMEOUT,
        control_timeout: float = DEFAULT_CONTROL_TIMEOUT,
        membership: Membership | None = None,
        security: ServerSecurity = OPEN,
    ) -> None:
        """:param engine: the runner's engine (``runner.engine``).
        :param tails: the tail store the engine writes to.
        :param journal: the journal the engine reads (for heads and lag).
        :param listen: ``HOST:PORT`` to bind; port 0 picks a free port (see :attr:`port`).
        :param token: a ``write`` token (beside ``security.tokens``); with no
            token at all every call is let in (bind to a loopback address then).
        :param lag_timeout: seconds a reply waits for lag before it leaves it out.
        :param control_timeout: seconds a control waits for a running task to stop.
        :param membership: the runner's part in a cluster, for ``GetCluster``;
            ``None`` when it does not share work (``scaleout.enabled`` false).
        :param security: TLS, the tokens file's tokens, and whether an open bind is allowed.
        :raises InvalidArgument: ``listen`` is not ``HOST:PORT`` (field
            ``listen``), ``token`` is empty or too short (field ``token``), or
            ``listen`` is open to other machines without TLS and tokens.
        """
        if token is not None:
            written = Tokens({token: Role.WRITE}, field="token")
            security = replace(security, tokens=Tokens.merged(security.tokens, written))
        super().__init__(listen=listen, security=security)
        self._service = RunnerService(
            engine=engine,
            tails=tails,
            journal=journal,
            lag_timeout=lag_timeout,
            control_timeout=control_timeout,
            membership=membership,
        )

    def _add_services(self, server: grpc.aio.Server) -> None:
        runner_pb2_grpc.add_RunnerServicer_to_server(self._service, server)
