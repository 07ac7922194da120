"""Prometheus metrics of one runner, and their ``/metrics`` HTTP endpoint.

Every :class:`Metrics` has its own :class:`~prometheus_client.CollectorRegistry`
(not the process-wide default), so that several runners, or tests, can live
in one process. Counters and the run duration histogram are fed by a
:data:`~tailrunner.engines.base.RunObserver` after every run, and the
events processed by a :data:`~tailrunner.engines.base.ProgressObserver`
as runs go (an eager watch never ends); the gauges are read from the engine
when scraped.

:func:`serve_metrics` serves prometheus_client's own exposition
(:class:`~prometheus_client.MetricsHandler`, in a thread); a scrape first has
the event loop refresh the gauges, because that reads the engine's task table
(not safe from another thread) and asks the journal for heads (async).

==============================================  ======================================
metric                                          meaning
==============================================  ======================================
``tailrunner_events_processed_total{activity}``  events handed to the activity's runs
``tailrunner_runs_total{activity,outcome}``      runs by outcome (``eof``, ``error`` …)
``tailrunner_retries_total{activity}``           runs after which a retry was scheduled
``tailrunner_run_duration_seconds{activity}``    how long runs took (histogram)
``tailrunner_suspended_tasks{activity}``         tasks waiting for an operator
``tailrunner_tasks{activity,state}``             tasks by state
``tailrunner_open_streams``                      runs (journal streams) open now
``tailrunner_lag_events{activity}``              events after the tails, summed (not
                                                 counting ``COMPLETE`` tasks)
``tailrunner_event_loop_stalls_total``           stalls of the event loop longer than
                                                 ``engine.loop_lag_warning`` (an activity
                                                 that blocks it; the log names it)
==============================================  ======================================

A runner that shares the work (``scaleout.enabled``, given a
:class:`~tailrunner.scaleout.membership.Membership`) has these too, read from
its leases' counters at each scrape (per runner: Prometheus adds the
``instance``; ``tailrunner_runner_info`` names the incarnation):

==============================================  ======================================
metric                                          meaning
==============================================  ======================================
``tailrunner_runner_info{incarnation}``          1, naming this runner's incarnation id
``tailrunner_segments_held``                     segments whose lease it holds now
``tailrunner_lease_heartbeats_total``            renewals that reached the database
``tailrunner_lease_heartbeat_failures_total``    renewals that failed
``tailrunner_segments_claimed_total``            segments claimed
``tailrunner_segments_rescued_total``            of those, taken over from a runner
                                                 whose lease had expired
``tailrunner_segments_lost_total``               segments lost (not renewed in time,
                                                 taken over, or a fenced write)
``tailrunner_segments_released_total``           segments handed back between runs
``tailrunner_fenced_writes_total``               writes the fence stopped: the lease
                                                 was gone
==============================================  ======================================

Runs ended by an operator's stop are counted with the outcome ``stopped``.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.to_thread
import structlog
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, MetricsHandler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from tailrunner.address import HostPort, format_host_port, parse_host_port
from tailrunner.admin.lag import LagTracker, TaskTail
from tailrunner.engines.base import Engine
from tailrunner.engines.execute import RunResult
from tailrunner.engines.task import Task
from tailrunner.errors import InvalidArgument, TailrunnerError
from tailrunner.journal.api import JournalApi
from tailrunner.security import OPEN, ServerSecurity
from tailrunner.security.auth import bearer_token
from tailrunner.states import OutcomeKind, TaskState

if TYPE_CHECKING:
    from tailrunner.scaleout.membership import Membership
    from tailrunner.watchdog import LoopWatchdog

log = structlog.get_logger(__name__)

NAMESPACE = "tailrunner"
#: Seconds a scrape's connection may take for its TLS handshake and its request.
_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_METRICS_LISTEN = "127.0.0.1:9740"
#: Runs last from milliseconds (lazy, cron) to hours (an eager watch stream).
RUN_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    1800.0, 3600.0, float("inf"),
)  # fmt: skip


class Metrics:
    """The metrics of one engine; making it starts observing the engine's runs.

    :param engine: the runner's engine (``runner.engine``).
    :param journal: where the lag gauge reads heads and counts events.
    :param registry: where the metrics are registered; a new one by default.
    :param lag_interval: seconds during which a computed lag is reused: a
        scrape more often than this does not ask the journal again.
    :param lag_timeout: seconds a scrape waits for the lag; after that it
        serves the previous values (and logs why). Keep it below the
        scraper's timeout (Prometheus: 10 s by default).
    :param membership: the runner's part in a cluster: its leases' metrics
        (see the module's docstring); ``None`` when it does not share work.
    :param watchdog: the runner's loop-lag watchdog (``runner.watchdog``), whose
        stalls are counted.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        journal: JournalApi,
        registry: CollectorRegistry | None = None,
        lag_interval: float = 10.0,
        lag_timeout: float = 5.0,
        membership: Membership | None = None,
        watchdog: LoopWatchdog | None = None,
    ) -> None:
        self._engine = engine
        self._membership = membership
        self._tracker = LagTracker(journal)
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._lag_interval = lag_interval
        self._lag_timeout = lag_timeout
        self._lag_due = float("-inf")
        self._lock = anyio.Lock()
        r = self.registry
        self.events_processed = Counter(
            "events_processed", "Events read by the activity's runs.", ["activity"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.runs = Counter(
            "runs", "Runs, by how they ended.", ["activity", "outcome"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "retries", "Runs after which a retry was scheduled.", ["activity"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.run_duration = Histogram(
            "run_duration_seconds", "How long runs took.", ["activity"],
            namespace=NAMESPACE, registry=r, buckets=RUN_DURATION_BUCKETS,
        )  # fmt: skip
        self.suspended_tasks = Gauge(
            "suspended_tasks", "Tasks waiting for an operator to resume them.", ["activity"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.tasks = Gauge(
            "tasks", "Tasks, by state.", ["activity", "state"], namespace=NAMESPACE, registry=r
        )
        self.open_streams = Gauge(
            "open_streams", "Runs (journal streams) open now.", namespace=NAMESPACE, registry=r
        )
        self.lag_events = Gauge(
            "lag_events", "Events after the tasks' tails (head minus tail), summed.", ["activity"],
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        self.loop_stalls = Counter(
            "event_loop_stalls", "Stalls of the event loop past engine.loop_lag_warning.",
            namespace=NAMESPACE, registry=r,
        )  # fmt: skip
        if watchdog is not None:
            # Told from the watchdog's thread; a counter takes that.
            watchdog.add_observer(lambda seconds: self.loop_stalls.inc())
        # An int read is safe from any thread, so this one is always current.
        self.open_streams.set_function(lambda: engine.running)
        # Every series exists from the start (at 0), so rates and alerts see them.
        for name in engine.activities:
            self.events_processed.labels(name)
            self.retries.labels(name)
            self.run_duration.labels(name)
            self.suspended_tasks.labels(name)
            self.lag_events.labels(name)
            for kind in OutcomeKind:
                self.runs.labels(name, kind.value)
            for state in TaskState:
                self.tasks.labels(name, state.value)
        engine.add_observer(self._observe)
        engine.add_progress_observer(self._progress)
        self._cluster: _ClusterCollector | None = None
        if membership is not None:
            self._cluster = _ClusterCollector(membership.incarnation, _read_cluster(membership))
            r.register(self._cluster)

    def _progress(self, task: Task, events: int) -> None:
        # Reported as runs go, so that an eager watch that never ends counts too.
        self.events_processed.labels(task.activity.name).inc(events)

    def _observe(self, task: Task, result: RunResult) -> None:
        name = task.activity.name
        self.runs.labels(name, result.kind.value).inc()
        if task.state is TaskState.RETRY:
            self.retries.labels(name).inc()
        duration = (result.finished_at - result.started_at).total_seconds()
        self.run_duration.labels(name).observe(max(0.0, duration))

    async def refresh(self, *, force_lag: bool = False) -> None:
        """Bring the gauges up to date; the lag only when ``lag_interval`` has passed.

        Call it on the event loop that runs the engine. A journal that fails
        or is slow leaves the previous lag in place (logged).

        :param force_lag: recompute the lag now, whatever the interval says.
        """
        async with self._lock:
            self._count_states()
            if self._cluster is not None and self._membership is not None:
                self._cluster.numbers = _read_cluster(self._membership)
            now = anyio.current_time()
            if not force_lag and now < self._lag_due:
                return
            snapshot: list[TaskTail] = [
                (t.activity.name, t.aggregate, t.tail)
                for t in self._engine.tasks()
                # A complete task never runs again: the events after it are no backlog.
                if t.state is not TaskState.COMPLETE
            ]
            lags: dict[str, int] | None = None
            with anyio.move_on_after(self._lag_timeout):
                try:
                    lags = await self._tracker.lag_by_activity(snapshot, self._engine.activities)
                except TailrunnerError as exc:
                    log.warning("lag not measured", error=str(exc))
                    return
            if lags is None:
                log.warning("lag not measured", error=f"timed out after {self._lag_timeout}s")
                return
            for name, lag in lags.items():
                self.lag_events.labels(name).set(lag)
            self._lag_due = anyio.current_time() + self._lag_interval

    def _count_states(self) -> None:
        counts = {(name, state): 0 for name in self._engine.activities for state in TaskState}
        for task in self._engine.tasks():
            key = (task.activity.name, task.state)
            counts[key] = counts.get(key, 0) + 1
        for (name, state), count in counts.items():
            self.tasks.labels(name, state.value).set(count)
            if state is TaskState.SUSPENDED:
                self.suspended_tasks.labels(name).set(count)


@dataclass(frozen=True, slots=True)
class _ClusterNumbers:
    """The leases' counters at one instant, read on the event loop."""

    held: int
    heartbeats: int
    heartbeat_failures: int
    claimed: int
    rescued: int
    lost: int
    released: int
    fenced_writes: int


def _read_cluster(membership: Membership) -> _ClusterNumbers:
    leases = membership.leases
    stats = leases.stats
    return _ClusterNumbers(
        held=len(leases.owned()),
        heartbeats=stats.heartbeats,
        heartbeat_failures=stats.heartbeat_failures,
        claimed=stats.claimed,
        rescued=stats.rescued,
        lost=stats.lost,
        released=stats.released,
        fenced_writes=membership.fenced_writes.total,
    )


class _ClusterCollector(Collector):
    """The cluster's series, from the numbers :meth:`Metrics.refresh` last read.

    The leases change on the event loop and a scrape renders in a thread of
    its own: the refresh copies the counters on the loop, and this serves
    that copy.
    """

    #: (name without the namespace, help, the field of ``_ClusterNumbers``)
    _COUNTERS = (
        ("lease_heartbeats", "Lease renewals that reached the database.", "heartbeats"),
        ("lease_heartbeat_failures", "Lease renewals that failed.", "heartbeat_failures"),
        ("segments_claimed", "Segments claimed.", "claimed"),
        (
            "segments_rescued",
            "Segments claimed from a runner whose lease had expired.",
            "rescued",
        ),
        (
            "segments_lost",
            "Segments lost: not renewed in time, taken over, or a fenced write.",
            "lost",
        ),
        ("segments_released", "Segments handed back between runs.", "released"),
        ("fenced_writes", "Writes the fence stopped: the lease was gone.", "fenced_writes"),
    )

    def __init__(self, incarnation: str, numbers: _ClusterNumbers) -> None:
        self._incarnation = incarnation
        self.numbers = numbers

    def collect(self) -> Iterator[Metric]:
        numbers = self.numbers  # one read: a refresh may replace it meanwhile
        yield InfoMetricFamily(
            f"{NAMESPACE}_runner",
            "This runner in its cluster: its incarnation id.",
            value={"incarnation": self._incarnation},
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_segments_held",
            "Segments whose lease this runner holds now.",
            value=numbers.held,
        )
        for name, documentation, attribute in self._COUNTERS:
            yield CounterMetricFamily(
                f"{NAMESPACE}_{name}", documentation, value=getattr(numbers, attribute)
            )


async def serve_metrics(
    metrics: Metrics,
    listen: str = DEFAULT_METRICS_LISTEN,
    *,
    security: ServerSecurity = OPEN,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` over HTTP on ``listen`` until cancelled.

    ::

        port = await tg.start(serve_metrics, metrics, "127.0.0.1:0")

    prometheus_client's :class:`~prometheus_client.MetricsHandler` answers
    in a thread of its own; before it renders the registry, the scrape asks
    this event loop to :meth:`~Metrics.refresh` the gauges, so that the
    engine and the journal are only ever read from the loop.

    :param listen: ``HOST:PORT``; port 0 picks a free port.
    :param security: HTTPS (``security.tls``), and the tokens a scrape must
        carry as ``Authorization: Bearer <token>`` (any role: a scrape reads).
    :returns: through ``task_status``, the bound port.
    :raises InvalidArgument: naming ``listen`` when it is not ``HOST:PORT`` or
        cannot be bound; naming ``insecure`` when it is open to other machines
        without TLS and tokens.
    """
    address = parse_host_port(listen, field="listen")
    security.check_bind(address, kind="metrics")
    context = None if security.tls is None else security.tls.ssl_context()
    try:
        server = _MetricsServer(address, _handler(metrics, security), context)
    except OSError as exc:
        raise InvalidArgument("listen", f"cannot listen on {listen}: {exc.strerror}") from exc
    try:
        async with BlockingPortal() as portal:
            server.portal = portal
            thread = threading.Thread(
                target=server.serve_forever, args=(0.1,), name=f"metrics {address}", daemon=True
            )
            thread.start()
            try:
                bound = int(server.server_address[1])
                log.info(
                    "listening", service="metrics", address=format_host_port(address.host, bound)
                )
                task_status.started(bound)
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    # shutdown() waits for serve_forever to notice: not on the loop.
                    await anyio.to_thread.run_sync(server.shutdown)
    finally:
        server.server_close()


class _MetricsServer(ThreadingHTTPServer):
    """An HTTP server on ``address``, IPv4 or IPv6 as its host says."""

    def __init__(
        self,
        address: HostPort,
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext | None = None,
    ) -> None:
        family, *_ = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self.address_family = family
        #: The event loop's portal, once serving: scrapes refresh through it.
        self.portal: BlockingPortal | None = None
        super().__init__((address.host, address.port), handler)
        if context is not None:
            # The handshake happens in the request's own thread (finish_request):
            # a client that stalls it must not stall the accepting thread.
            self.socket = context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(_HANDSHAKE_TIMEOUT)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                log.info("tls handshake failed", service="metrics", error=type(exc).__name__)
                return
        super().finish_request(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's full name (a reverse DNS
        # query that may hang); nothing here uses it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


def _handler(metrics: Metrics, security: ServerSecurity) -> type[BaseHTTPRequestHandler]:
    """prometheus_client's handler for ``metrics``, refreshing them on the loop first."""
    tokens = security.tokens

    class Handler(MetricsHandler):
        registry = metrics.registry
        # One request per connection, closed after the answer.
        protocol_version = "HTTP/1.1"
        # A client that sends nothing frees its thread after this long.
        timeout = _HANDSHAKE_TIMEOUT

        def do_GET(self) -> None:
            if tokens is not None:
                given = bearer_token([("authorization", self.headers.get("Authorization", ""))])
                if given is None or tokens.role_of(given) is None:
                    log.warning("refused", service="metrics", code=401)
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Bearer realm="metrics"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            if urllib.parse.urlsplit(self.path).path not in ("/metrics", "/"):
                self.send_error(404, explain="see /metrics")
                return
            portal = cast(_MetricsServer, self.server).portal
            try:
                if portal is None:
                    raise RuntimeError("not serving yet")
                portal.call(metrics.refresh)
            except Exception as exc:
                # The runner is stopping, or the refresh failed: no numbers to give.
                log.error("scrape failed", error=f"{type(exc).__name__}: {exc}")
                self.send_error(503, explain="the metrics could not be refreshed")
                return
            super().do_GET()

        def end_headers(self) -> None:
            if not self.close_connection:
                self.send_header("Connection", "close")  # sets close_connection
            super().end_headers()

    return Handler
