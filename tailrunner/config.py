"""Configuration: one TOML file plus ``TAILRUNNER_SECTION__KEY`` overrides, checked once.

:func:`load_config` reads the file (or only the defaults), applies the
environment, validates every key and returns a frozen :class:`Config`. Code
below the CLI receives that object and never sees a dict or an environment
variable. Anything wrong stops start-up with one :class:`~tailrunner.errors.ConfigError`
naming the key, the value, where it came from and what is allowed::

    engine.kind = "lazzy" in config/lazy.toml: expected one of lazy, eager, cron

Environment variables override single keys: ``TAILRUNNER_ENGINE__KIND=eager``,
``TAILRUNNER_RETRY__MAX_ATTEMPTS=5``, ``TAILRUNNER_ACTIVITIES__LIMITS__COUNTER=3``
(sections and keys separated by ``__``, matched lowercase). A value is read
as a TOML value when it is one (``5``, ``true``, ``["a", "b"]``), else as
text; keys that take text (``engine.kind``, ``tails.store`` …) always take the
text as it is.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NoReturn, TypeAlias, TypeVar, cast, get_type_hints

from croniter import croniter

from tailrunner.activities.decorator import Activity
from tailrunner.address import parse_host_port
from tailrunner.engines.kinds import ENGINE_KINDS
from tailrunner.engines.options import EngineOptions
from tailrunner.engines.retry import RetryPolicy
from tailrunner.errors import ConfigError, InvalidArgument
from tailrunner.journal.client import DEFAULT_CALL_TIMEOUT, DEFAULT_KEEPALIVE
from tailrunner.logs import LOG_FORMATS, LogFormat
from tailrunner.reconnect import DEFAULT_RECONNECT, ReconnectPolicy
from tailrunner.scaleout.balance import DEFAULT_SLACK
from tailrunner.scaleout.leases import DEFAULT_LEASE, MAX_LEASE
from tailrunner.scaleout.segments import DEFAULT_SEGMENTS, MAX_SEGMENTS
from tailrunner.security import ClientTls, Role, ServerSecurity, ServerTls, Tokens
from tailrunner.security.channels import read_token
from tailrunner.sqlite_wal import sqlite_options
from tailrunner.stores import control_character, parse_store_url, redact

__all__ = [
    "ENGINE_KINDS",
    "ENV_PREFIX",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ActivitiesConfig",
    "AdminConfig",
    "Config",
    "JournalConfig",
    "LogConfig",
    "MetricsConfig",
    "PluginsConfig",
    "ScaleoutConfig",
    "TailsConfig",
    "load_config",
    "parse_duration",
]

LogLevel = Literal["debug", "info", "warning", "error"]

#: Environment variables with this prefix and a ``__`` in their name are overrides.
ENV_PREFIX = "TAILRUNNER_"

LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")

_EMPTY: Mapping[str, Any] = MappingProxyType({})


# --------------------------------------------------------------------------- the objects
#
# Each section is a dataclass; a field that is a config key says how its value
# is read in its metadata (:func:`_key`). The key lists, the text keys and the
# section parsers are derived from these declarations: a key is added in one place.


def _key(
    convert: Callable[[_Parser], _Convert[Any]],
    *,
    text: bool = False,
    default: Callable[[_Parser], Any] | None = None,
    into: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The metadata of a field that is a config key.

    :param convert: given the parser, the converter of the key's raw value.
    :param text: from the environment the key takes the text as it is.
    :param default: the default, when it depends on where the config is.
    :param into: the fields the converted value fills (a tuple of values).
    """
    return {"convert": convert, "text": text, "default": default, "into": into}


#: The metadata of a field that is a config table parsed by its section's own code.
_TABLE: dict[str, Any] = {"table": True}


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalConfig:
    """``[journal]``: where the event journal is, and how to reach it again.

    :ivar address: the journal's gRPC address, ``HOST:PORT``.
    :ivar reconnect_initial: seconds before the first attempt to reach the
        journal again after it went away; doubles per failed attempt.
    :ivar reconnect_max_delay: the longest wait between those attempts.
    :ivar keepalive: seconds between keepalive pings; a journal that went
        silent (a black-holed network) is noticed after about twice this,
        and the runs on it are retried.
    :ivar call_timeout: the deadline of every unary call to the journal.
    :ivar tls: reach the journal over TLS (also on when a ``tls_…`` file is given).
    :ivar tls_ca: PEM CA bundle the journal's certificate must chain to
        (unset: the system's roots).
    :ivar tls_cert: PEM client certificate, when the journal wants mutual TLS.
    :ivar tls_key: PEM key of ``tls_cert``.
    :ivar tls_server_name: the name the journal's certificate carries, when
        it is not the host of ``address``.
    :ivar token_env: the environment variable that holds the bearer token the
        journal wants (a token never sits in a config file); unset or empty: none.
    """

    address: str = field(default="127.0.0.1:7740", metadata=_key(lambda p: p.address, text=True))
    reconnect_initial: float = field(
        default=DEFAULT_RECONNECT.initial, metadata=_key(lambda p: p.duration(positive=True))
    )
    reconnect_max_delay: float = field(
        default=DEFAULT_RECONNECT.max_delay, metadata=_key(lambda p: p.duration(positive=True))
    )
    keepalive: float = field(
        default=DEFAULT_KEEPALIVE,
        metadata=_key(lambda p: p.duration(positive=True, maximum=3600)),
    )
    call_timeout: float = field(
        default=DEFAULT_CALL_TIMEOUT,
        metadata=_key(lambda p: p.duration(positive=True, maximum=3600)),
    )
    tls: bool = field(default=False, metadata=_key(lambda p: p.boolean))
    tls_ca: Path | None = field(
        default=None, metadata=_key(lambda p: p.path(("journal", "tls_ca")), text=True)
    )
    tls_cert: Path | None = field(
        default=None, metadata=_key(lambda p: p.path(("journal", "tls_cert")), text=True)
    )
    tls_key: Path | None = field(
        default=None, metadata=_key(lambda p: p.path(("journal", "tls_key")), text=True)
    )
    tls_server_name: str = field(default="", metadata=_key(lambda p: p.host_name, text=True))
    token_env: str = field(
        default="TAILRUNNER_JOURNAL_TOKEN", metadata=_key(lambda p: p.env_name, text=True)
    )

    def __post_init__(self) -> None:
        self.reconnect  # noqa: B018  # a bad pair fails here, not at first use
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "journal.tls_cert and journal.tls_key go together: a client certificate"
                " needs its key"
            )

    @property
    def client_tls(self) -> ClientTls | None:
        """TLS toward the journal; ``None``: plaintext."""
        if not (self.tls or self.tls_ca or self.tls_cert or self.tls_server_name):
            return None
        return ClientTls(
            ca=self.tls_ca,
            cert=self.tls_cert,
            key=self.tls_key,
            server_name=self.tls_server_name or None,
            field="journal.tls",
        )

    def token(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The journal token from :attr:`token_env`; ``None`` when it is unset or empty.

        :raises InvalidArgument: naming the variable: the token has characters a
            header cannot carry.
        """
        return read_token(environ, self.token_env)

    @property
    def reconnect(self) -> ReconnectPolicy:
        """How the signal stream and discovery reconnect: not the activities' ``[retry]``."""
        return dataclasses.replace(
            DEFAULT_RECONNECT, initial=self.reconnect_initial, max_delay=self.reconnect_max_delay
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivitiesConfig:
    """``[activities]``: which activities run, their limits and retry policies.

    :ivar enabled: activity names or :mod:`fnmatch` globs; ``("*",)`` runs all.
    :ivar limits: activity name → most runs of it at once.
    :ivar retry: activity name → its retry policy: ``[activities.retry.NAME]``
        over the global ``[retry]`` (keys it does not set come from there).
    :ivar settings: activity name → its ``[activities.settings.NAME]`` table
        as written; :meth:`Config.configure_activities` reads it into the
        activity's settings type once the plugins are loaded.
    """

    enabled: tuple[str, ...] = field(default=("*",), metadata=_key(lambda p: p.patterns))
    limits: Mapping[str, int] = field(default_factory=lambda: _EMPTY, metadata=_TABLE)
    retry: Mapping[str, RetryPolicy] = field(default_factory=lambda: _EMPTY, metadata=_TABLE)
    settings: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: _EMPTY, metadata=_TABLE
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TailsConfig:
    """``[tails]``: where tails are stored.

    :ivar store: ``memory:``, ``sqlite:////ABSOLUTE/PATH`` (a relative path in
        the file has been resolved) or ``postgresql://…``; what
        :func:`tailrunner.tails.open.open_tail_store` takes.
    """

    store: str = field(
        default="sqlite:///tails.db",
        # The default file sits beside the config (or in the working directory).
        metadata=_key(
            lambda p: p.store, text=True, default=lambda p: f"sqlite:///{p.base_dir / 'tails.db'}"
        ),
    )
    #: PostgreSQL only: the schema that holds the tables.
    postgres_schema: str = field(
        default="tailrunner", metadata=_key(lambda p: p.identifier, text=True)
    )
    #: How many run records the store keeps per task.
    run_retention: int = field(default=100, metadata=_key(lambda p: p.integer(minimum=1)))


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """``[log]``: what the logs look like.

    :ivar format: ``console``, ``json``, or ``auto`` (console on a terminal,
        JSON otherwise).
    :ivar level: the lowest level logged.
    """

    format: LogFormat = field(
        default="auto", metadata=_key(lambda p: p.choice(LOG_FORMATS), text=True)
    )
    level: LogLevel = field(
        default="info", metadata=_key(lambda p: p.choice(LOG_LEVELS), text=True)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginsConfig:
    """``[plugins]``.

    :ivar strict: stop at the first plugin that fails to load, instead of
        reporting it and running the others.
    """

    strict: bool = field(default=False, metadata=_key(lambda p: p.boolean))


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """``[admin]``: the runner's operator API (``tailrunner status``, ``tailrunner task …``).

    :ivar listen: ``HOST:PORT`` of the admin gRPC service; port 0 picks a free one.
    :ivar token_env: the environment variable that holds a ``write`` bearer
        token (a token never sits in a config file); unset or empty: none.
    :ivar tokens_file: a file of ``ROLE TOKEN`` lines (``read`` or ``write``),
        mode 600; with no token at all every call is let in.
    :ivar tls_cert: PEM certificate chain: serve TLS (with ``tls_key``).
    :ivar tls_key: PEM key of ``tls_cert``.
    :ivar tls_client_ca: PEM CA bundle: require client certificates it signed.
    :ivar insecure: allow a non-loopback ``listen`` without TLS or tokens.
    """

    listen: str = field(default="127.0.0.1:7741", metadata=_key(lambda p: p.listen, text=True))
    token_env: str = field(
        default="TAILRUNNER_ADMIN_TOKEN", metadata=_key(lambda p: p.env_name, text=True)
    )
    tokens_file: Path | None = field(
        default=None, metadata=_key(lambda p: p.path(("admin", "tokens_file")), text=True)
    )
    tls_cert: Path | None = field(
        default=None, metadata=_key(lambda p: p.path(("admin", "tls_cert")), text=True)
    )
    tls_key: Path | None = field(
        default=None, metadata=_key(lambda p: p.path(("admin", "tls_key")), text=True)
    )
    tls_client_ca: Path | None = field(
        default=None, metadata=_key(lambda p: p.path(("admin", "tls_client_ca")), text=True)
    )
    insecure: bool = field(default=False, metadata=_key(lambda p: p.boolean))

    def __post_init__(self) -> None:
        _check_server_tls("admin", self.tls_cert, self.tls_key, self.tls_client_ca)

    def tokens(self, environ: Mapping[str, str] = os.environ) -> Tokens | None:
        """The tokens the admin server (and the metrics endpoint) accept, if any.

        :raises InvalidArgument: the tokens file or the token is unusable (names which).
        """
        from_file = (
            None
            if self.tokens_file is None
            else Tokens.from_file(self.tokens_file, field="admin.tokens_file")
        )
        token = read_token(environ, self.token_env)
        written = None if token is None else Tokens({token: Role.WRITE}, field=self.token_env)
        return Tokens.merged(from_file, written)

    def security(self, tokens: Tokens | None) -> ServerSecurity:
        """The admin server's TLS and ``tokens``."""
        return ServerSecurity(
            tls=_server_tls("admin", self.tls_cert, self.tls_key, self.tls_client_ca),
            tokens=tokens,
            insecure=self.insecure,
            field="admin.insecure",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """``[metrics]``: Prometheus metrics on ``http://LISTEN/metrics``.

    :ivar listen: ``HOST:PORT``; empty turns the endpoint off.
    :ivar lag_interval: a scrape recomputes the lag gauges at most this often
        (seconds); lag needs journal calls, scrapes may come often.
    :ivar tls_cert: PEM certificate chain: serve HTTPS (with ``tls_key``).
    :ivar tls_key: PEM key of ``tls_cert``.
    :ivar tls_client_ca: PEM CA bundle: require client certificates it signed.
    :ivar insecure: allow a non-loopback ``listen`` without TLS or tokens.
        (A scrape needs a ``read`` token when the admin server has tokens.)
    """

    listen: str = field(
        default="127.0.0.1:9740", metadata=_key(lambda p: p.optional_listen, text=True)
    )
    lag_interval: float = field(default=10.0, metadata=_key(lambda p: p.duration(positive=False)))
    tls_cert: Path | None = field(
        default=None, metadata=_key(lambda p: p.path(("metrics", "tls_cert")), text=True)
    )
    tls_key: Path | None = field(
        default=None, metadata=_key(lambda p: p.path(("metrics", "tls_key")), text=True)
    )
    tls_client_ca: Path | None = field(
        default=None, metadata=_key(lambda p: p.path(("metrics", "tls_client_ca")), text=True)
    )
    insecure: bool = field(default=False, metadata=_key(lambda p: p.boolean))

    def __post_init__(self) -> None:
        _check_server_tls("metrics", self.tls_cert, self.tls_key, self.tls_client_ca)

    def security(self, tokens: Tokens | None) -> ServerSecurity:
        """The metrics endpoint's TLS, and the admin server's ``tokens``."""
        return ServerSecurity(
            tls=_server_tls("metrics", self.tls_cert, self.tls_key, self.tls_client_ca),
            tokens=tokens,
            insecure=self.insecure,
            field="metrics.insecure",
        )


def _check_server_tls(
    section: str, cert: Path | None, key: Path | None, client_ca: Path | None
) -> None:
    if (cert is None) != (key is None):
        raise ConfigError(
            f"{section}.tls_cert and {section}.tls_key go together: a server certificate"
            " needs its key"
        )
    if client_ca is not None and cert is None:
        raise ConfigError(
            f"{section}.tls_client_ca needs {section}.tls_cert and {section}.tls_key:"
            " client certificates are checked over TLS"
        )


def _server_tls(
    section: str, cert: Path | None, key: Path | None, client_ca: Path | None
) -> ServerTls | None:
    if cert is None or key is None:
        return None
    return ServerTls(cert=cert, key=key, client_ca=client_ca, field=f"{section}.tls")


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleoutConfig:
    """``[scaleout]``: several runners share the tasks on one PostgreSQL.

    Tasks hash into ``segments``; each runner claims a fair share of them
    with a lease on the tail store's database (``tails.store`` must be
    ``postgresql://…``; the lease table sits in ``tails.postgres_schema``),
    renewed every third of ``lease``, and runs only their tasks. Every tail
    write is fenced by the lease, so a runner that lost it writes nothing.

    :ivar enabled: share the work; off: this runner runs every task.
    :ivar segments: how many segments tasks hash into; every runner of a
        cluster must use the same number.
    :ivar lease: how long a lease lasts unless renewed: a dead runner's
        tasks move to the others after about this long.
    :ivar slack: segments a runner may hold beyond its even share.
    """

    enabled: bool = field(default=False, metadata=_key(lambda p: p.boolean))
    segments: int = field(
        default=DEFAULT_SEGMENTS,
        metadata=_key(lambda p: p.integer(minimum=1, maximum=MAX_SEGMENTS)),
    )
    lease: float = field(
        default=DEFAULT_LEASE,
        metadata=_key(lambda p: p.duration(positive=True, maximum=MAX_LEASE)),
    )
    slack: int = field(default=DEFAULT_SLACK, metadata=_key(lambda p: p.integer(minimum=0)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration, validated. Build it with :func:`load_config`.

    :ivar path: the file it was read from; ``None`` for defaults and environment only.
    :ivar origins: dotted key → where its value came from (the file's path or
        an environment variable's name), for every key that was set; use
        :meth:`origin`.
    """

    journal: JournalConfig = field(default_factory=JournalConfig)
    #: ``[engine]`` with ``[retry]``, ``[activities]``' limits and retry
    #: policies and ``journal``'s reconnect policy: what the engine takes.
    engine: EngineOptions = field(default_factory=EngineOptions)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    activities: ActivitiesConfig = field(default_factory=ActivitiesConfig)
    tails: TailsConfig = field(default_factory=TailsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    scaleout: ScaleoutConfig = field(default_factory=ScaleoutConfig)
    path: Path | None = None
    origins: Mapping[str, str] = field(default_factory=lambda: _EMPTY, repr=False, compare=False)

    def origin(self, key: str) -> str:
        """Where ``key`` (dotted, e.g. ``activities.enabled``) got its value, for messages.

        :returns: a file path, an environment variable's name, or ``"the defaults"``.
        """
        return self.origins.get(key, _DEFAULTS)

    def check_activity_names(self, known: Collection[str]) -> None:
        """Check that ``[activities.limits]``, ``.retry`` and ``.settings`` name known activities.

        Config is read before plugins load, so the CLI calls this once it
        knows the activities: a limit for a misspelt name would otherwise do
        nothing, silently.

        :param known: the names of the loaded activities.
        :raises ConfigError: naming the first key that names no activity.
        """
        for section, names in (
            ("limits", self.activities.limits),
            ("retry", self.activities.retry),
            ("settings", self.activities.settings),
        ):
            for name in names:
                if name in known:
                    continue
                key = _dotted(("activities", section, name))
                shown = (
                    f"{key} = {self.activities.limits[name]}" if section == "limits" else f"[{key}]"
                )
                raise ConfigError(
                    f"{shown} in {self.origin(key)}: no such activity"
                    f"{_did_you_mean(name, sorted(known))} ({_known('activities', sorted(known))})"
                )

    def configure_activities(self, activities: Iterable[Activity]) -> list[Activity]:
        """``activities``, each with its ``[activities.settings.NAME]`` read into its settings.

        An activity without a settings type must have no such table; one
        with a settings type gets the table's keys as its fields (the other
        fields keep their defaults).

        :raises ConfigError: naming the key: a table for an activity that
            takes no settings, an unknown key, a value of the wrong type, a
            field without default that the table does not set, or a value
            the settings type itself refuses (a ``ValueError`` from it).
        """
        return [self._configured(a) for a in activities]

    def _configured(self, act: Activity) -> Activity:
        at = ("activities", "settings", act.name)
        table = self.activities.settings.get(act.name)
        origin = self.origin(_dotted(at))
        if act.settings_type is None:
            if table is None:
                return act
            raise ConfigError(f"[{_dotted(at)}] in {origin}: activity {act.name} takes no settings")
        values = _settings_values(act.settings_type, table or _EMPTY, at, self.origin)
        try:
            settings = act.settings_type(**values)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"[{_dotted(at)}] in {origin}: {_printable(str(exc))}") from exc
        return dataclasses.replace(act, settings=settings)


# --------------------------------------------------------------------------- durations

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_ALLOWED = (
    "a duration such as 250ms, 30s, 5m, 1h30m, or a number of seconds (at most 100 years)"
)
#: The longest duration a key takes: longer ones overflow the clocks they are added to.
_MAX_DURATION = 100 * 365.25 * 24 * 3600
#: The largest whole number a key takes: what every database stores (a 32-bit integer).
_MAX_INTEGER = 2**31 - 1


def parse_duration(text: str | float, *, key: str) -> float:
    """Seconds in a duration: ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"90"`` or ``90``.

    :param text: the duration, or a number of seconds (not negative).
    :param key: the config key it is for, named in the error.
    :raises ConfigError: ``text`` is not a duration.
    """
    seconds = _duration_seconds(text)
    if seconds is None:
        raise ConfigError(f"{_printable(key)} = {_show(text)}: expected {_DURATION_ALLOWED}")
    return seconds


def _duration_seconds(value: object) -> float | None:
    """``value`` in seconds, or ``None`` when it is no duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = "".join(value.split())
        try:
            seconds = float(text)
        except ValueError:
            seconds = 0.0
            end = 0
            for part in _DURATION_PART.finditer(text):
                if part.start() != end:
                    return None
                seconds += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
                end = part.end()
            if end == 0 or end != len(text):
                return None
    else:
        return None
    if not math.isfinite(seconds) or seconds < 0 or seconds > _MAX_DURATION:
        return None
    return seconds


# --------------------------------------------------------------------------- activity settings


def _settings_values(
    kind: type[Any], table: Mapping[str, Any], at: Key, origin: Callable[[str], str]
) -> dict[str, Any]:
    """The fields of settings type ``kind`` that ``table`` sets, converted by their types."""
    fields = {f.name: f for f in dataclasses.fields(kind) if f.init}
    hints = get_type_hints(kind)
    for name in table:
        if name not in fields:
            key = _dotted((*at, name))
            hint = _did_you_mean(name, fields, prefix=_dotted(at) + ".")
            # The value is not shown: a key we do not know may hold a secret.
            raise ConfigError(
                f"{key} = {_HIDDEN} in {origin(key)}: unknown key{hint} ({_known('keys', fields)})"
            )
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = _dotted((*at, name))
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(
                    f"{key} in {origin(_dotted(at))}: required"
                    f" ({_SETTING_KINDS.get(hints[name], ('a value',))[0]})"
                )
            continue
        value = table[name]
        expected, convert = _SETTING_KINDS.get(hints[name], ("", None))
        if convert is None:
            raise TypeError(f"{kind.__name__}.{name}: settings cannot be of type {hints[name]!r}")
        converted = convert(value)
        if isinstance(converted, _Bad) or converted is None:
            shown = _show(value, (*at, name))
            raise ConfigError(f"{key} = {shown} in {origin(key)}: expected {expected}")
        values[name] = converted
    return values


def _setting_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _setting_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _setting_float(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _setting_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _setting_texts(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _setting_duration(value: Any) -> timedelta | None:
    seconds = _duration_seconds(value)
    if seconds is None:
        return None
    try:
        return timedelta(seconds=seconds)
    except OverflowError:  # more than timedelta holds (about 2.7 million years)
        return None


#: The types a settings field may have: what a value must be, and its converter.
_SETTING_KINDS: Mapping[Any, tuple[str, Callable[[Any], Any]]] = {
    str: ("text", _setting_text),
    int: ("a whole number", _setting_int),
    float: ("a number", _setting_float),
    bool: ("true or false", _setting_bool),
    tuple[str, ...]: ("a list of text", _setting_texts),
    timedelta: (_DURATION_ALLOWED, _setting_duration),
}


# --------------------------------------------------------------------------- loading

_DEFAULTS = "the defaults"
#: The converters of ``[retry]``'s keys (and of each ``[activities.retry.NAME]``):
#: :class:`RetryPolicy` lives below config, so its keys are declared here, one
#: per field of it (checked below).
_RETRY_KEYS: Mapping[str, Callable[[_Parser], _Convert[Any]]] = {
    "initial": lambda p: p.duration(positive=False),
    # RetryPolicy judges the ranges; its error names the field.
    "multiplier": lambda p: p.number(),
    "max_delay": lambda p: p.duration(positive=False),
    "jitter": lambda p: p.number(),
    "max_attempts": lambda p: p.attempts,
}
assert set(_RETRY_KEYS) == {f.name for f in dataclasses.fields(RetryPolicy)}, "retry keys"

#: The keys of ``[engine]``: fields of :class:`EngineOptions`, which lives below
#: config (checked below); the engine's other fields come from other sections.
_ENGINE_KEYS: Mapping[str, dict[str, Any]] = {
    "kind": _key(lambda p: p.choice(ENGINE_KINDS), text=True),
    "capacity": _key(lambda p: p.integer(minimum=1)),
    "backstop": _key(lambda p: p.duration(positive=True)),
    # A duration or a cron expression: it fills interval and cron.
    "interval": _key(lambda p: p.interval, into=("interval", "cron")),
    "discovery_interval": _key(lambda p: p.duration(positive=True)),
    "shutdown_grace": _key(lambda p: p.duration(positive=False)),
    "loop_lag_warning": _key(lambda p: p.duration(positive=False)),
    "read_ahead": _key(lambda p: p.integer(minimum=0, maximum=1000)),
}
assert set(_ENGINE_KEYS) <= {f.name for f in dataclasses.fields(EngineOptions)}, "engine keys"


def _declared(kind: type) -> dict[str, dict[str, Any]]:
    """The config keys of a section's dataclass, each with how it is read."""
    if kind is EngineOptions:
        return dict(_ENGINE_KEYS)
    return {
        f.name: dict(f.metadata)
        for f in dataclasses.fields(kind)
        if "convert" in f.metadata or "table" in f.metadata
    }


#: Section name → its dataclass (``retry`` is a :class:`RetryPolicy`).
_SECTION_TYPES: Mapping[str, type] = {
    f.name: RetryPolicy if f.name == "retry" else f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Config)
    if f.name not in ("path", "origins")
}
_SECTIONS = tuple(_SECTION_TYPES)
_KEYS: Mapping[str, tuple[str, ...]] = {
    name: tuple(_RETRY_KEYS) if kind is RetryPolicy else tuple(_declared(kind))
    for name, kind in _SECTION_TYPES.items()
}
#: Keys whose value is text: from the environment they take the text as it is.
_TEXT_KEYS = {
    (name, key)
    for name, kind in _SECTION_TYPES.items()
    if kind is not RetryPolicy
    for key, meta in _declared(kind).items()
    if meta.get("text")
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
#: An environment variable's name, upper case as the convention has it (a
#: lower-case or mixed one is more likely a token put where its name belongs).
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*\Z")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
_CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_STORE_ALLOWED = "memory:, sqlite:///PATH (relative to the config file's folder) or postgresql://…"

Key = tuple[str, ...]
T = TypeVar("T")
#: Checks a raw value: the typed value, or a :class:`_Bad` saying what is allowed.
_Convert: TypeAlias = Callable[[Any], "T | _Bad"]


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override and validate the configuration.

    :param path: the TOML file; ``None`` for the defaults (and the environment).
    :param environ: the environment whose ``TAILRUNNER_SECTION__KEY`` variables
        override the file; :data:`os.environ` when ``None``.
    :raises ConfigError: the file cannot be read, is not UTF-8 or not TOML,
        nests arrays or tables more than 32 deep, or a key or value is wrong
        (a number must be finite, a whole number at most 2**31 - 1); the
        message is one printable line that names the key, the value, where
        it came from and what is allowed. The value of a key whose name says
        it is a secret (``token``, ``password`` …) is never shown.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {} if path is None else _read_toml(path)
    sources = _Sources(file=None if path is None else _printable(str(path)))
    for name in sorted(environ):
        key = _env_key(name)
        if key is not None:
            shown = _printable(name)
            value = _env_value(key, environ[name], shown)
            _check_depth(value, key, shown)
            _override(data, key, value, shown)
            sources.env[key] = shown
    base_dir = Path.cwd() if path is None else path.absolute().parent
    return _Parser(sources, base_dir).config(data, path)


def _read_toml(path: Path) -> dict[str, Any]:
    where = f"config file {_printable(str(path))}"
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{where}: not found") from exc
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start},"
            f" line {line}: {exc.reason}); save it as UTF-8"
        ) from exc
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {_printable(str(exc))}") from exc
    except RecursionError as exc:
        raise ConfigError(
            f"{where}: not valid here: arrays or tables nested more than {_MAX_DEPTH} deep"
        ) from exc
    _check_depth(parsed, (), _printable(str(path)))
    return parsed


#: How deep arrays and tables may nest in a config value: deeper is no config, but an attack
#: on the recursion limit (of tomllib, of the checks here, of whatever reads settings).
_MAX_DEPTH = 32


def _check_depth(value: object, at: Key, origin: str) -> None:
    """Refuse a value nested more than :data:`_MAX_DEPTH` deep, naming its key; no recursion."""
    stack: list[tuple[object, Key, int]] = [(value, at, 0)]
    while stack:
        item, key, depth = stack.pop()
        if depth > _MAX_DEPTH:
            # The outermost key that names a table: below it the nesting is in one value.
            raise ConfigError(
                f"{_dotted(key)} in {origin}: arrays or tables nested more than {_MAX_DEPTH} deep"
            )
        if isinstance(item, Mapping):
            stack.extend((v, (*key, k), depth + 1) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, key, depth + 1) for v in item)


#: Variables of the CLI's own (addresses of ``tailrunner status``, ``append`` …):
#: never read as misspelt overrides.
_CLI_VARIABLES = frozenset({"TAILRUNNER_JOURNAL", "TAILRUNNER_ADMIN", "TAILRUNNER_ADMIN_TOKEN"})


def _env_key(name: str) -> Key | None:
    """The key a variable overrides; ``None`` for a variable that is not an override."""
    if not name.startswith(ENV_PREFIX):
        return None
    rest = name.removeprefix(ENV_PREFIX).lower()
    if "__" not in rest:
        # Other TAILRUNNER_ variables are left alone (the CLI's
        # TAILRUNNER_JOURNAL and TAILRUNNER_ADMIN name addresses, and
        # TAILRUNNER_ADMIN_TOKEN holds the admin token), unless they spell a
        # real section and key with a single underscore: that is a typo.
        if name in _CLI_VARIABLES:
            return None
        for section in _SECTIONS:
            tail = _KEYS[section][0] if rest == section else rest.removeprefix(section + "_")
            if tail != rest and tail in _KEYS[section]:
                raise ConfigError(
                    f"{_printable(name)}: not an override; did you mean"
                    f" {ENV_PREFIX}{section.upper()}__{tail.upper()}?"
                    " (sections and keys are separated by a double underscore)"
                )
        return None
    key = tuple(rest.split("__"))
    if not all(key):
        raise ConfigError(f"{_printable(name)}: an empty key between double underscores")
    return key


def _env_value(key: Key, text: str, origin: str) -> Any:
    """An environment variable's text as the value for ``key``; ``origin`` names the variable."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        parsed = None
    except RecursionError as exc:
        raise ConfigError(
            f"{_dotted(key)} = (not shown) in {origin}: arrays or tables nested more than"
            f" {_MAX_DEPTH} deep"
        ) from exc
    value = parsed["v"] if parsed is not None and parsed.keys() == {"v"} else None
    if key in _TEXT_KEYS:
        return value if isinstance(value, str) else text
    if key == ("activities", "enabled") and not isinstance(value, list):
        # A shell-friendly list: TAILRUNNER_ACTIVITIES__ENABLED=counter,report-*
        return [item.strip() for item in text.split(",")]
    return text if value is None else value


def _override(data: dict[str, Any], key: Key, value: Any, origin: str) -> None:
    table = data
    for depth, part in enumerate(key[:-1]):
        inner = table.setdefault(part, {})
        if not isinstance(inner, dict):
            where = _dotted(key[: depth + 1])
            shown = _show(inner, key[: depth + 1])
            raise ConfigError(f"{origin}: {where} is {shown}, not a table")
        table = inner
    old = table.get(key[-1])
    if isinstance(old, dict) and isinstance(value, dict):
        _merge(old, value)
    else:
        table[key[-1]] = value


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for name, value in new.items():
        old = into.get(name)
        if isinstance(old, dict) and isinstance(value, dict):
            _merge(old, value)
        else:
            into[name] = value


@dataclass(slots=True)
class _Sources:
    """Where each key's value came from: an environment variable, else the file."""

    file: str | None
    env: dict[Key, str] = field(default_factory=dict)

    def of(self, key: Key) -> str:
        # An override of a whole table (TAILRUNNER_ACTIVITIES__LIMITS='{a = 1}')
        # is the origin of every key in it.
        for end in range(len(key), 0, -1):
            if key[:end] in self.env:
                return self.env[key[:end]]
        # A table that an override created, e.g. by TAILRUNNER_ENGINE__KIND__X.
        for env_key, name in self.env.items():
            if env_key[: len(key)] == key:
                return name
        return self.file or _DEFAULTS


@dataclass(slots=True)
class _Parser:
    sources: _Sources
    base_dir: Path
    #: Dotted key → origin, for every key read; becomes ``Config.origins``.
    seen: dict[str, str] = field(default_factory=dict)

    def config(self, data: Mapping[str, Any], path: Path | None) -> Config:
        for name, value in data.items():
            if name not in _SECTIONS:
                self._unknown_top(name, value)
            if not isinstance(value, dict):
                self.fail((name,), value, f"expected a table [{name}]")
        retry_table = self.table(data, ("retry",))
        retry = self.retry(retry_table, ("retry",), base=_EMPTY)
        sections: dict[str, Any] = {}
        for name, kind in _SECTION_TYPES.items():
            table = self.table(data, (name,))
            if name == "journal":
                sections[name] = self.journal(table)
            elif name == "retry":
                sections[name] = retry
            elif name == "activities":
                sections[name] = self.activities(table, retry_table)
            elif kind is not EngineOptions:
                sections[name] = kind(**self.section(name, table))
        # The engine's options gather what the other sections say of it.
        sections["engine"] = EngineOptions(
            **self.section("engine", self.table(data, ("engine",))),
            retry=retry,
            retry_overrides=sections["activities"].retry,
            activity_limits=sections["activities"].limits,
            reconnect=sections["journal"].reconnect,
        )
        scaleout: ScaleoutConfig = sections["scaleout"]
        store: str = sections["tails"].store
        if scaleout.enabled and not store.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                f"scaleout.enabled = true in {self.sources.of(('scaleout', 'enabled'))}: needs"
                f" tails.store = postgresql://… (it is {_show(redact(store))}, from"
                f" {self.sources.of(('tails', 'store'))}): the runners share their leases and"
                " fence every tail write in one PostgreSQL database"
            )
        return Config(
            **sections,
            path=path,
            origins=MappingProxyType(dict(self.seen)),
        )

    # -- sections

    def section(self, name: str, table: Mapping[str, Any]) -> dict[str, Any]:
        """The values of section ``name``'s keys, read as their fields declare."""
        kind = _SECTION_TYPES[name]
        self.known(table, (name,))
        defaults = kind()
        values: dict[str, Any] = {}
        for key, meta in _declared(kind).items():
            if "convert" not in meta:
                continue
            into: tuple[str, ...] = meta["into"]
            if meta["default"] is not None:
                default = meta["default"](self)
            elif into:
                default = tuple(getattr(defaults, n) for n in into)
            else:
                default = getattr(defaults, key)
            value = self.get(table, (name, key), meta["convert"](self), default)
            if into:
                values.update(zip(into, value, strict=True))
            else:
                values[key] = value
        return values

    def journal(self, table: Mapping[str, Any]) -> JournalConfig:
        values = self.section("journal", table)
        self.reconnect(table, values["reconnect_initial"], values["reconnect_max_delay"])
        return JournalConfig(**values)

    def reconnect(self, table: Mapping[str, Any], initial: float, max_delay: float) -> None:
        """``journal.reconnect_initial`` and ``journal.reconnect_max_delay``, checked together."""
        if max_delay >= initial:
            return
        d = JournalConfig()
        # The one rule between the two keys: blame the one that was set,
        # max_delay when both were, and name the other with its value.
        defaults = {
            "reconnect_initial": d.reconnect_initial,
            "reconnect_max_delay": d.reconnect_max_delay,
        }
        blamed, other = (
            ("reconnect_max_delay", "reconnect_initial")
            if "reconnect_max_delay" in table
            else ("reconnect_initial", "reconnect_max_delay")
        )
        shown = _show(table[other]) if other in table else f"{defaults[other]:g}s (the default)"
        bound = "must not exceed" if blamed == "reconnect_initial" else "must be at least"
        self.fail(("journal", blamed), table[blamed], f"{bound} journal.{other} = {shown}")

    def retry(self, table: Mapping[str, Any], at: Key, *, base: Mapping[str, Any]) -> RetryPolicy:
        """A policy from ``table`` over ``base`` (the global ``[retry]``, for overrides)."""
        self.known(table, at, allowed=_KEYS["retry"])
        merged = {**base, **table}
        values: dict[str, Any] = {}
        for name, value in merged.items():
            # Inherited keys were checked (and named) as [retry]'s own.
            key = (*at, name) if name in table else ("retry", name)
            values[name] = self.check(key, value, _RETRY_KEYS[name](self))
        if values.get("max_attempts") == 0:
            values["max_attempts"] = None  # 0 in config: retry forever
        try:
            return RetryPolicy(**values)
        except InvalidArgument as exc:
            name = exc.field
            if name == "max_delay" and name not in table and "initial" in table:
                # "max delay must be at least the initial": blame the key that was set.
                name = "initial"
            key = (*at, name) if name in table else ("retry", name)
            reason = exc.reason
            if name in ("initial", "max_delay") and "initial" in reason:
                # The one rule between two keys: say which other key it is about.
                other = "max_delay" if name == "initial" else "initial"
                other_key = (*at, other) if other in table else ("retry", other)
                shown = (
                    _show(merged[other])
                    if other in merged
                    else f"{getattr(RetryPolicy(), other):g}s (the default)"
                )
                bound = "must not exceed" if name == "initial" else "must be at least"
                reason = f"{bound} {_dotted(other_key)} = {shown}"
            self.fail(key, merged.get(name, getattr(RetryPolicy(), name)), reason)

    def activities(
        self, table: Mapping[str, Any], retry_table: Mapping[str, Any]
    ) -> ActivitiesConfig:
        values = self.section("activities", table)
        limits: dict[str, int] = {}
        for name, value in self.table(table, ("activities", "limits")).items():
            key = ("activities", "limits", name)
            limits[name] = self.check(key, value, self.integer(minimum=1))
        policies: dict[str, RetryPolicy] = {}
        for name, value in self.table(table, ("activities", "retry")).items():
            key = ("activities", "retry", name)
            if not isinstance(value, dict):
                self.fail(key, value, f"expected a table [{_dotted(key)}] with keys of [retry]")
            self.seen[_dotted(key)] = self.sources.of(key)
            policies[name] = self.retry(value, key, base=retry_table)
        settings: dict[str, Mapping[str, Any]] = {}
        for name, value in self.table(table, ("activities", "settings")).items():
            key = ("activities", "settings", name)
            if not isinstance(value, dict):
                self.fail(
                    key, value, f"expected a table [{_dotted(key)}] of the activity's settings"
                )
            self.seen[_dotted(key)] = self.sources.of(key)
            for setting in value:
                self.seen[_dotted((*key, setting))] = self.sources.of((*key, setting))
            settings[name] = MappingProxyType(dict(value))
        return ActivitiesConfig(
            **values,
            limits=MappingProxyType(limits),
            retry=MappingProxyType(policies),
            settings=MappingProxyType(settings),
        )

    # -- tables and keys

    def table(self, data: Mapping[str, Any], key: Key) -> Mapping[str, Any]:
        value = data.get(key[-1], _EMPTY)
        if not isinstance(value, Mapping):
            self.fail(key, value, f"expected a table [{_dotted(key)}]")
        return value

    def known(self, table: Mapping[str, Any], at: Key, allowed: tuple[str, ...] = ()) -> None:
        allowed = allowed or _KEYS[at[-1]]
        for name, value in table.items():
            if name not in allowed:
                key = (*at, name)
                hint = _did_you_mean(name, allowed, prefix=_dotted(at) + ".")
                # The value is not shown: a key we do not know may hold a secret.
                self.fail(key, value, f"unknown key{hint} ({_known('keys', allowed)})", hide=True)

    def _unknown_top(self, name: str, value: object) -> NoReturn:
        everything = [f"{section}.{key}" for section in _SECTIONS for key in _KEYS[section]]
        if isinstance(value, dict):
            hint = _did_you_mean(name, _SECTIONS, prefix="[", suffix="]")
            self.fail(
                (name,),
                value,
                f"unknown section{hint} ({_known('sections', _SECTIONS)})",
                hide=True,
            )
        # A key outside any section, e.g. `kind = "eager"` for engine.kind.
        owners = [k for k in everything if k.endswith("." + name)]
        hint = (
            f"; did you mean {owners[0]}?"
            if owners
            else _did_you_mean(name, everything, match_on=lambda k: k.partition(".")[2])
        )
        self.fail((name,), value, f"unknown key{hint} (keys belong in a section)", hide=True)

    def get(self, table: Mapping[str, Any], key: Key, convert: _Convert[T], default: T) -> T:
        if key[-1] not in table:
            return default
        return self.check(key, table[key[-1]], convert)

    def check(self, key: Key, value: Any, convert: _Convert[T]) -> T:
        self.seen[_dotted(key)] = self.sources.of(key)
        result = convert(value)
        if isinstance(result, _Bad):
            self.fail(key, value, result.expected)
        return result

    def fail(self, key: Key, value: object, expected: str, *, hide: bool = False) -> NoReturn:
        shown = _HIDDEN if hide else _show(value, key)
        raise ConfigError(f"{_dotted(key)} = {shown} in {self.sources.of(key)}: {expected}")

    # -- converters: the value, or _Bad saying what is allowed

    @staticmethod
    def choice(allowed: tuple[T, ...]) -> _Convert[T]:
        def convert(value: Any) -> T | _Bad:
            if isinstance(value, str) and value.lower() in allowed:
                return cast(T, value.lower())
            return _Bad(f"expected one of {', '.join(map(str, allowed))}")

        return convert

    @staticmethod
    def integer(*, minimum: int, maximum: int = _MAX_INTEGER) -> _Convert[int]:
        def convert(value: Any) -> int | _Bad:
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and minimum <= value <= maximum
            ):
                return value
            return _Bad(f"expected a whole number, at least {minimum}, at most {maximum}")

        return convert

    @staticmethod
    def duration(*, positive: bool, maximum: float | None = None) -> _Convert[float]:
        def convert(value: Any) -> float | _Bad:
            seconds = _duration_seconds(value)
            if seconds is None or (positive and seconds == 0):
                return _Bad(f"expected {'a positive' if positive else 'a'} {_DURATION_ALLOWED[2:]}")
            if maximum is not None and seconds > maximum:
                return _Bad(f"expected at most {maximum:g} seconds")
            return seconds

        return convert

    @staticmethod
    def number() -> _Convert[float]:
        def convert(value: Any) -> float | _Bad:
            if isinstance(value, int | float) and not isinstance(value, bool):
                try:
                    number = float(value)
                except OverflowError:  # an int beyond any float
                    number = math.inf
                if math.isfinite(number):
                    return number
                return _Bad("expected a finite number")
            return _Bad("expected a number")

        return convert

    @staticmethod
    def identifier(value: Any) -> str | _Bad:
        if isinstance(value, str) and _IDENTIFIER.match(value):
            return value
        return _Bad("expected a SQL identifier: a letter or _, then letters, digits or _")

    @staticmethod
    def boolean(value: Any) -> bool | _Bad:
        return value if isinstance(value, bool) else _Bad("expected true or false")

    @staticmethod
    def interval(value: Any) -> tuple[float | None, str | None] | _Bad:
        seconds = _duration_seconds(value)
        if seconds is not None and seconds > 0:
            return seconds, None
        if isinstance(value, str):
            expression = " ".join(value.split())
            fields = expression.split(" ")
            if (len(fields) == 5 or expression in _CRON_ALIASES) and croniter.is_valid(expression):
                return None, expression
        return _Bad(
            f"expected a positive {_DURATION_ALLOWED[2:]},"
            ' or a 5-field cron expression such as "*/5 * * * *" (read in UTC)'
        )

    @staticmethod
    def address(value: Any) -> str | _Bad:
        bad = _Bad("expected HOST:PORT, e.g. 127.0.0.1:7740")
        if not isinstance(value, str) or not value or not value.isprintable() or " " in value:
            return bad
        if "://" in value or value.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
            return value  # a gRPC target URI: grpc checks it when it connects
        return value if _is_host_port(value, any_port=False) else bad

    @staticmethod
    def listen(value: Any) -> str | _Bad:
        bad = _Bad("expected HOST:PORT to listen on, e.g. 127.0.0.1:7741 (port 0: any free port)")
        ok = isinstance(value, str) and value.isprintable() and _is_host_port(value)
        return value if ok else bad

    @classmethod
    def optional_listen(cls, value: Any) -> str | _Bad:
        return "" if value == "" else cls.listen(value)

    def path(self, key: Key) -> _Convert[Path | None]:
        """A file's path; relative to the config file that says it (else to the working
        directory); empty: none."""

        def convert(value: Any) -> Path | _Bad | None:
            if value == "":
                return None
            if not isinstance(value, str) or not value.isprintable():
                return _Bad("expected the path of a file")
            came_from_file = self.sources.of(key) == self.sources.file
            return (self.base_dir if came_from_file else Path.cwd()) / Path(value).expanduser()

        return convert

    @staticmethod
    def host_name(value: Any) -> str | _Bad:
        if isinstance(value, str) and (
            value == "" or re.fullmatch(r"[A-Za-z0-9.:*_-]+", value, re.ASCII)
        ):
            return value
        return _Bad("expected a host name, e.g. journal.example.com")

    @staticmethod
    def env_name(value: Any) -> str | _Bad:
        if isinstance(value, str) and _ENV_NAME.match(value):
            return value
        return _Bad("expected an environment variable name, e.g. TAILRUNNER_ADMIN_TOKEN")

    @staticmethod
    def patterns(value: Any) -> tuple[str, ...] | _Bad:
        if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
            return tuple(value)
        return _Bad(
            'expected a list of activity names or globs, e.g. ["*"] or ["counter", "report-*"]'
        )

    def store(self, value: Any) -> str | _Bad:
        if not isinstance(value, str):
            return _Bad(f"expected {_STORE_ALLOWED}")
        try:
            store = parse_store_url(value, field="tails.store", allowed=_STORE_ALLOWED)
        except InvalidArgument:
            bad = control_character(value) or control_character(urllib.parse.unquote(value))
            return _Bad(
                f"{bad}: expected {_STORE_ALLOWED}" if bad else f"expected {_STORE_ALLOWED}"
            )
        if store.scheme == "sqlite":
            try:  # the file's options (file_mode, check), judged at load, not at open
                sqlite_options(store, field="tails.store", names=("file_mode", "check"))
            except InvalidArgument as exc:
                return _Bad(exc.reason)
        # Relative to the file that says it; a path from the environment
        # (or without a file) is relative to the working directory.
        came_from_file = self.sources.of(("tails", "store")) == self.sources.file
        return str(store.resolved(self.base_dir if came_from_file else Path.cwd()))

    @staticmethod
    def attempts(value: Any) -> int | _Bad:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INTEGER:
            return value
        return _Bad(
            "expected a whole number: 0 (retry forever) or the most tries per tail,"
            f" at most {_MAX_INTEGER}"
        )


@dataclass(frozen=True, slots=True)
class _Bad:
    """A converter's verdict: the value is wrong; ``expected`` says what is allowed."""

    expected: str


def _is_host_port(value: str, *, any_port: bool = True) -> bool:
    try:
        parse_host_port(value, field="", any_port=any_port)
    except InvalidArgument:
        return False
    return True


def _dotted(key: Iterable[str]) -> str:
    return ".".join(part if _BARE_KEY.match(part) else _quote(part) for part in key)


#: The longest a value is shown in a message: the key and the origin matter more.
_SHOW_AT_MOST = 200
#: A key whose name says its value is a secret (``token``, ``db_password``, ``api_key`` …).
_SECRET_NAME = re.compile(
    r"token|passw|pwd|secret|credential|apikey|private|cookie|(?:^|[_-])key\Z|\Aauth",
    re.IGNORECASE,
)
_HIDDEN = "(value hidden)"


def _is_secret(key: Key, value: object) -> bool:
    """Whether ``value`` may be a secret: ``key``'s name says so.

    A ``…_env`` key (``admin.token_env``) holds the name of the variable
    that holds the secret: its value is shown while it is such a name, and
    hidden when it is not (then it may be the token itself).
    """
    if not key or not _SECRET_NAME.search(key[-1]):
        return False
    is_name = isinstance(value, str) and _ENV_NAME.match(value) is not None
    return not (key[-1].lower().endswith("_env") and is_name)


def _show(value: object, key: Key = ()) -> str:
    """``value`` (of ``key``) as TOML would write it, on one line; a secret is never shown."""
    if _is_secret(key, value):
        return _HIDDEN
    text = _written(value, key)
    return text if len(text) <= _SHOW_AT_MOST else text[: _SHOW_AT_MOST - 1] + "…"


def _written(value: object, key: Key) -> str:
    # Recursion is bounded: every value was checked by _check_depth.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(redact(value))
    if isinstance(value, list):
        return "[" + ", ".join(_written(v, key) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(
            f"{_dotted([k])} = {_HIDDEN if _is_secret((*key, k), v) else _written(v, (*key, k))}"
            for k, v in value.items()
        )
        return "{" + (f" {inner} " if inner else "") + "}"
    return _printable(str(value))


def _quote(text: str) -> str:
    """``text`` in double quotes, escaped so that it prints as one line of itself."""
    return _printable(json.dumps(text, ensure_ascii=False))


def _printable(text: str) -> str:
    """``text`` with each unprintable character (a line break, ESC, NUL …) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _did_you_mean(
    name: str,
    candidates: Iterable[str],
    *,
    prefix: str = "",
    suffix: str = "",
    match_on: Callable[[str], str] | None = None,
) -> str:
    """``"; did you mean X?"`` for the closest candidate, or ``""``."""
    candidates = list(candidates)
    keys = [match_on(c) for c in candidates] if match_on else candidates
    close = difflib.get_close_matches(name, keys, n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {prefix}{candidates[keys.index(close[0])]}{suffix}?"


def _known(what: str, names: Iterable[str]) -> str:
    names = list(names)
    return f"known {what}: {', '.join(names)}" if names else f"there are no {what}"
