"""Plugins: the pluggy hooks, and loading the plugins of the ``tailrunner`` entry-point group.

A plugin is a module (or any object) with hook implementations, named by an
entry point of its distribution::

    # pyproject.toml
    [project.entry-points.tailrunner]
    reports = "reports.plugin"

    # reports/plugin.py
    from tailrunner import hookimpl

    @hookimpl
    def tailrunner_activities():
        return [daily_report, weekly_report]   # made with @activity

:func:`load_plugins` loads each plugin on its own: one that fails to import,
names an unknown hook, raises, or returns something that is not an activity
is reported by name with its error, and the others still load (unless
``strict``).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from types import MappingProxyType
from typing import Any

import pluggy
import structlog

from tailrunner.activities.decorator import Activity
from tailrunner.errors import ConfigError, PluginError
from tailrunner.hooks import ENTRY_POINT_GROUP, hookimpl, hookspec

__all__ = [
    "ENTRY_POINT_GROUP",
    "HookSpecs",
    "PluginInfo",
    "PluginSet",
    "hookimpl",
    "hookspec",
    "is_enabled",
    "load_plugins",
]

log = structlog.get_logger(__name__)


class HookSpecs:
    """The hooks a tailrunner plugin may implement (as plain module-level functions)."""

    @hookspec
    def tailrunner_activities(self) -> Iterable[Activity]:  # pragma: no cover - a spec
        """The activities this plugin provides.

        A plain sync function: it *returns* the activities (made with
        :func:`tailrunner.activities.activity`), which the engines then run.
        Names must be unique across all plugins.

        :returns: an iterable of :class:`~tailrunner.activities.Activity`,
            e.g. a list; an empty one is fine.
        """
        return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginInfo:
    """One plugin, loaded or not, as ``tailrunner plugins`` shows it.

    :ivar name: the entry point's name (or an in-process plugin's ``__name__``).
    :ivar dist: the distribution that declares it; ``None`` for in-process plugins.
    :ivar version: that distribution's version.
    :ivar value: what the entry point names (``module:attr``).
    :ivar activities: the names of the activities it provides; empty when it failed.
    :ivar error: why it failed, or ``None``.
    """

    name: str
    dist: str | None = None
    version: str | None = None
    value: str | None = None
    activities: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether it loaded and its activities are available."""
        return self.error is None


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginSet:
    """What :func:`load_plugins` found.

    :ivar activities: activity name → activity, from every plugin that loaded,
        in load order.
    :ivar plugins: every plugin, in load order, with its error if it failed.
    :ivar manager: the pluggy manager holding the plugins that loaded.
    """

    activities: Mapping[str, Activity]
    plugins: tuple[PluginInfo, ...]
    manager: pluggy.PluginManager = field(repr=False, compare=False)

    @property
    def errors(self) -> tuple[PluginInfo, ...]:
        """The plugins that failed."""
        return tuple(p for p in self.plugins if not p.ok)

    def select(self, enabled: Iterable[str], *, origin: str | None = None) -> list[Activity]:
        """The activities that ``enabled`` (``activities.enabled``) names.

        :param enabled: activity names or :mod:`fnmatch` globs (``"*"``,
            ``"report-*"``), matched case-sensitively. The catch-all ``"*"``
            leaves out opt-in activities (:attr:`Activity.opt_in`): another
            pattern must name them.
        :param origin: where ``enabled`` came from (``Config.origin("activities.enabled")``),
            for the error message.
        :returns: the matching activities, in load order.
        :raises ConfigError: naming ``activities.enabled`` when a pattern matches
            no activity, or nothing is selected; it lists the known activities.
        """
        patterns = list(enabled)
        names = list(self.activities)
        shown = "[" + ", ".join(json.dumps(p) for p in patterns) + "]"
        where = f"activities.enabled = {shown}" + (f" in {origin}" if origin else "")
        known = (
            f"known activities: {', '.join(names)}"
            if names
            else "no plugin provides an activity; see `tailrunner plugins`"
        )
        for pattern in patterns:
            if not fnmatch.filter(names, pattern):
                close = difflib.get_close_matches(pattern, names, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(
                    f"{where}: {json.dumps(pattern)} matches no activity{hint} ({known})"
                )
        chosen = [
            activity for name, activity in self.activities.items() if is_enabled(activity, patterns)
        ]
        if not chosen:
            raise ConfigError(f"{where}: selects no activity ({known})")
        return chosen


def is_enabled(activity: Activity, enabled: Iterable[str]) -> bool:
    """Whether the patterns of ``activities.enabled`` enable ``activity``.

    A pattern enables the activities whose names it matches, except that the
    catch-all ``"*"`` leaves out the opt-in ones.
    """
    return any(
        fnmatch.fnmatchcase(activity.name, pattern)
        for pattern in enabled
        if not (activity.opt_in and pattern == "*")
    )


def load_plugins(*, strict: bool, extra: Sequence[object] = ()) -> PluginSet:
    """Load the plugins of the ``tailrunner`` entry-point group, and ``extra``.

    Each plugin is loaded, registered under its entry point's name, checked
    for unknown hooks and asked for its activities on its own. A plugin
    that fails any of these is reported (logged as ``plugin failed``, and in
    :attr:`PluginSet.plugins` with its error) and left out, and the others
    still load. A plugin fails when it cannot be imported, implements a hook
    that does not exist (a misspelling), raises, returns something that is
    not an activity, or returns an activity whose name another plugin took.

    :param strict: raise at the first plugin that fails, instead of reporting it.
    :param extra: in-process plugins (modules or objects with hook
        implementations), loaded before the entry points; for tests and
        built-in activities. Entry points load after them, sorted by name
        (then distribution), so the first to claim an activity name keeps it.
    :raises PluginError: ``strict`` and a plugin failed; it names the plugin.
    """
    loader = _Loader(strict=strict)
    for plugin in extra:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        loader.add(_Entry(name=str(name)), _returning(plugin))
    # Sorted: the order decides which of two plugins keeps a contested
    # activity name, and must not depend on how a directory lists its files.
    for entry_point in sorted(
        metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (ep.name, ep.dist.name if ep.dist else "", ep.value),
    ):
        dist = entry_point.dist
        loader.add(
            _Entry(
                name=entry_point.name,
                dist=None if dist is None else dist.name,
                version=None if dist is None else dist.version,
                value=entry_point.value,
            ),
            entry_point.load,
        )
    loader.check_pending()
    return loader.collect()


@dataclass(slots=True, kw_only=True)
class _Entry:
    """A plugin while it loads."""

    name: str
    dist: str | None = None
    version: str | None = None
    value: str | None = None
    plugin: object | None = None
    activities: list[Activity] = field(default_factory=list)
    error: str | None = None

    def info(self) -> PluginInfo:
        return PluginInfo(
            name=self.name,
            dist=self.dist,
            version=self.version,
            value=self.value,
            activities=tuple(a.name for a in self.activities),
            error=self.error,
        )


class _Problem(Exception):
    """A plugin's hook returned something unusable; the message says what."""


class _Loader:
    def __init__(self, *, strict: bool) -> None:
        self.strict = strict
        self.manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.manager.add_hookspecs(HookSpecs)
        self.entries: list[_Entry] = []

    def add(self, entry: _Entry, load: Callable[[], object]) -> None:
        """Load and register one plugin; report it when that fails."""
        self.entries.append(entry)
        try:
            plugin = load()
        except Exception as exc:
            self.fail(entry, f"cannot be loaded: {_describe(exc)}", exc, traceback=True)
            return
        entry.plugin = plugin
        try:
            self.manager.register(plugin, name=entry.name)
        except pluggy.PluginValidationError as exc:
            # A hook whose arguments do not match the spec.
            self.fail(entry, _one_line(str(exc)), exc)
        except ValueError as exc:
            other = self.manager.get_name(plugin)
            self.fail(
                entry,
                f"registered twice, also as {other!r}"
                if other is not None
                else "another plugin is already registered under this name",
                exc,
            )

    def check_pending(self) -> None:
        """Report every plugin that implements a hook that does not exist."""
        specs = [
            name
            for name in vars(self.manager.hook)
            if not name.startswith("_") and getattr(self.manager.hook, name).has_spec()
        ]
        while True:
            try:
                self.manager.check_pending()
            except pluggy.PluginValidationError as exc:
                entry = next(e for e in self.entries if e.plugin is exc.plugin)
                unknown = sorted(
                    caller.name
                    for caller in self.manager.get_hookcallers(exc.plugin) or ()
                    if not caller.has_spec()
                    and any(
                        i.plugin is exc.plugin and not i.optionalhook
                        for i in caller.get_hookimpls()
                    )
                )
                message = "implements unknown hook " + ", ".join(unknown)
                close = difflib.get_close_matches(unknown[0], specs, n=1) if unknown else []
                if close:
                    message += f"; did you mean {close[0]}?"
                self.fail(entry, message, exc)
            else:
                return

    def collect(self) -> PluginSet:
        """Ask each plugin that loaded for its activities."""
        owners: dict[str, str] = {}
        for entry in self.entries:
            if entry.error is not None:
                continue
            try:
                activities = self.activities_of(entry)
            except _Problem as exc:
                self.fail(entry, str(exc), exc)
                continue
            except Exception as exc:
                self.fail(
                    entry, f"tailrunner_activities raised {_describe(exc)}", exc, traceback=True
                )
                continue
            clash = next((a.name for a in activities if a.name in owners), None)
            if clash is not None:
                self.fail(
                    entry,
                    f"provides activity {clash!r}, which plugin {owners[clash]!r} provides too",
                )
                continue
            entry.activities = activities
            owners.update((a.name, entry.name) for a in activities)
            log.debug("plugin loaded", plugin=entry.name, activities=[a.name for a in activities])
        return PluginSet(
            activities=MappingProxyType(
                {a.name: a for e in self.entries if e.error is None for a in e.activities}
            ),
            plugins=tuple(e.info() for e in self.entries),
            manager=self.manager,
        )

    def activities_of(self, entry: _Entry) -> list[Activity]:
        # Each plugin's implementation is called on its own (not through the
        # hook, which calls all of them) so that a failure is that plugin's.
        hook = self.manager.hook.tailrunner_activities
        found: list[Activity] = []
        for impl in hook.get_hookimpls():
            if impl.plugin is not entry.plugin:
                continue
            if impl.hookwrapper or impl.wrapper:
                raise _Problem("tailrunner_activities must be a plain hook, not a wrapper")
            result = impl.function()
            if isinstance(result, Activity):
                raise _Problem(
                    f"tailrunner_activities returned the activity {result.name!r} itself;"
                    f" expected an iterable of activities, e.g. [{result.func.__name__}]"
                )
            if isinstance(result, str | bytes) or not isinstance(result, Iterable):
                raise _Problem(
                    f"tailrunner_activities returned {_short(result)};"
                    " expected an iterable of activities"
                )
            for item in result:
                if not isinstance(item, Activity):
                    raise _Problem(
                        f"tailrunner_activities returned {_short(item)} among its activities;"
                        " expected activities made with @activity"
                    )
                if any(item.name == a.name for a in found):
                    raise _Problem(f"tailrunner_activities returned activity {item.name!r} twice")
                found.append(item)
        return found

    def fail(
        self,
        entry: _Entry,
        message: str,
        exc: BaseException | None = None,
        *,
        traceback: bool = False,
    ) -> None:
        """Report ``entry`` as failed, or raise when strict; unregister it either way."""
        if entry.plugin is not None and self.manager.get_name(entry.plugin) == entry.name:
            self.manager.unregister(entry.plugin, name=entry.name)
        entry.error = message
        entry.activities = []
        if self.strict:
            raise PluginError(entry.name, message) from exc
        log.error(
            "plugin failed",
            plugin=entry.name,
            dist=entry.dist,
            error=message,
            # The plugin's own traceback helps its author; ours would not.
            exc_info=exc if traceback else None,
        )


def _returning(plugin: object) -> Callable[[], object]:
    return lambda: plugin


def _describe(exc: BaseException) -> str:
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _short(value: Any) -> str:
    """``value`` for a message: what it is, without a memory address."""
    if inspect.iscoroutinefunction(value):
        return f"the async function {value.__qualname__} (not decorated with @activity?)"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{type(value).__name__} {value.__qualname__}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"
