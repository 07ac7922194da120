"""``tailrunner run``: run the activities of installed plugins under the configured engine."""

from __future__ import annotations

import functools
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import click
import structlog

from tailrunner.address import format_host_port, parse_host_port
from tailrunner.admin.metrics import Metrics, serve_metrics
from tailrunner.admin.server import AdminServer
from tailrunner.cli.terminal import printable
from tailrunner.config import Config, load_config
from tailrunner.errors import (
    AccessDenied,
    ConfigError,
    InvalidArgument,
    JournalUnavailable,
    PluginError,
    StoreError,
    TailrunnerError,
)
from tailrunner.journal.client import JournalClient
from tailrunner.runner import Runner
from tailrunner.security import ServerSecurity
from tailrunner.tails.open import open_tail_store
from tailrunner.tails.store import TailStore

log = structlog.get_logger(__name__)


@click.command("run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="TOML config (see config/lazy.toml); without it, defaults and TAILRUNNER_* variables.",
)
def run(config_path: Path | None) -> None:
    """Run plugin activities until SIGINT or SIGTERM, then stop cleanly.

    Loads the plugins of the entry-point group ``tailrunner``, connects to
    the journal, discovers the aggregates each activity follows and runs one
    task per (activity, aggregate) under the configured engine, resuming
    each from its stored tail.

    It prints the addresses of its admin service (``tailrunner status``,
    ``tailrunner task …``) and of its Prometheus metrics on stdout; the
    admin token, if any, comes from the variable ``admin.token_env`` names.

    Every config key can be overridden by an environment variable
    ``TAILRUNNER_SECTION__KEY``, e.g. ``TAILRUNNER_ENGINE__KIND=eager``.

    \b
    Examples:
      tailrunner run --config config/lazy.toml
      TAILRUNNER_ENGINE__KIND=cron tailrunner run --config config/lazy.toml
    """
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(printable(str(exc))) from None
    from tailrunner.logs import configure_logging

    configure_logging(config.log.format, config.log.level)
    try:
        try:
            anyio.run(_run, config)
        except BaseExceptionGroup as group:
            # A server that failed to start inside the runner's task group:
            # its error alone, not the group's traceback.
            raise _only_error(group) from None
    except (ConfigError, InvalidArgument, PluginError, StoreError) as exc:
        # What a plugin or a store says is escaped: it may hold anything.
        raise click.ClickException(printable(str(exc))) from None
    except TailrunnerError as exc:
        raise click.ClickException(printable(f"{type(exc).__name__}: {exc}")) from None


def _only_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one tailrunner error in ``group`` (nested groups too), else ``group`` itself."""
    errors = group.subgroup(lambda e: isinstance(e, TailrunnerError))
    if errors is None:
        return group
    leaves: list[BaseException] = []
    pending: list[BaseException] = [errors]
    while pending:
        error = pending.pop()
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    return leaves[0] if len(leaves) == 1 else group


async def _run(config: Config) -> None:
    from tailrunner.plugins import load_plugins

    plugins = load_plugins(strict=config.plugins.strict)
    config.check_activity_names(plugins.activities)
    activities = config.configure_activities(
        plugins.select(config.activities.enabled, origin=config.origin("activities.enabled"))
    )
    tails = await open_tail_store(
        config.tails.store,
        run_retention=config.tails.run_retention,
        postgres_schema=config.tails.postgres_schema,
    )
    admin_security, metrics_security = _security(config)
    runner: Runner | None = None
    try:
        async with AsyncExitStack() as stack:
            journal = await stack.enter_async_context(_journal(config))
            membership = None
            writes: TailStore = tails
            if config.scaleout.enabled:
                from tailrunner.scaleout.cluster import join_cluster

                member = await stack.enter_async_context(
                    join_cluster(
                        config.tails.store,
                        tails,
                        segments=config.scaleout.segments,
                        lease=config.scaleout.lease,
                        slack=config.scaleout.slack,
                        about=f"{socket.gethostname()} pid {os.getpid()} {config.engine.kind}",
                    )
                )
                membership, writes = member.membership, member.tails
            runner = Runner(
                journal=journal,
                tails=writes,
                activities=activities,
                options=config.engine,
                membership=membership,
            )
            # Observing from before the first run, so that no run is missed.
            metrics = Metrics(
                engine=runner.engine,
                journal=journal,
                lag_interval=config.metrics.lag_interval,
                membership=membership,
                watchdog=runner.watchdog,
            )
            admin = AdminServer(
                engine=runner.engine,
                tails=writes,
                journal=journal,
                listen=config.admin.listen,
                membership=membership,
                security=admin_security,
            )
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with admin, anyio.create_task_group() as tg:
                    await tg.start(runner.run)
                    metrics_port = None
                    if config.metrics.listen:
                        metrics_port = await tg.start(
                            functools.partial(
                                serve_metrics,
                                metrics,
                                config.metrics.listen,
                                security=metrics_security,
                            )
                        )
                    # Operators and tests read the bound addresses (port 0 picks one).
                    click.echo(f"admin on {admin.address}")
                    if membership is not None:
                        # The others' status then says where to ask this runner.
                        membership.about += f" admin {admin.address}"
                    if metrics_port is not None:
                        host = parse_host_port(config.metrics.listen, field="metrics.listen").host
                        metrics_at = format_host_port(host, metrics_port)
                        scheme = "http" if metrics_security.tls is None else "https"
                        click.echo(f"metrics on {scheme}://{metrics_at}/metrics")
                    sys.stdout.flush()
                    log.info(
                        "running",
                        engine=config.engine.kind,
                        incarnation=None if membership is None else membership.incarnation,
                        journal=config.journal.address,
                        admin=admin.address,
                        auth=admin_security.tokens is not None,
                        activities=[a.name for a in activities],
                    )
                    async for signum in signals:
                        log.info("stopping", signal=signal.Signals(signum).name)
                        tg.cancel_scope.cancel()
                        break
    finally:
        with anyio.CancelScope(shield=True):
            await tails.aclose()
    if runner is not None and runner.engine.abandoned:
        # An activity ignores cancellation: the event loop's own teardown
        # would wait for it forever. Its run was named in the log already.
        log.error("stopped, leaving runs behind", runs=len(runner.engine.abandoned))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    log.info("stopped")


def _security(config: Config) -> tuple[ServerSecurity, ServerSecurity]:
    """The admin server's and the metrics endpoint's TLS and tokens, checked before
    anything starts (a refused bind, an unreadable file); the tokens are never logged."""
    tokens = config.admin.tokens()
    admin, metrics = config.admin.security(tokens), config.metrics.security(tokens)
    if config.metrics.listen:
        listen = parse_host_port(config.metrics.listen, field="metrics.listen")
        metrics.check_bind(listen, kind="metrics")
        if metrics.tls is not None:
            metrics.tls.ssl_context()
    return admin, metrics


@asynccontextmanager
async def _journal(config: Config) -> AsyncIterator[JournalClient]:
    """The runner's client of the journal, its token checked (:func:`_check_journal_access`)."""
    async with JournalClient.connect(
        config.journal.address,
        reconnect=config.journal.reconnect,
        keepalive=config.journal.keepalive,
        timeout=config.journal.call_timeout,
        tls=config.journal.client_tls,
        token=config.journal.token(),
    ) as journal:
        await _check_journal_access(journal, config)
        yield journal


async def _check_journal_access(journal: JournalClient, config: Config) -> None:
    """A journal that refuses the runner's token is a setup error: say so before starting.

    A journal that cannot be reached yet is not: the runner waits for it as always.
    """
    try:
        with anyio.move_on_after(config.journal.call_timeout):
            await journal.list_aggregates(page_size=1)
    except AccessDenied as exc:
        raise ConfigError(
            f"the journal at {config.journal.address} refused the runner ({exc});"
            f" its token is read from ${config.journal.token_env}"
        ) from None
    except JournalUnavailable:
        pass


COMMANDS: list[click.Command] = [run]
