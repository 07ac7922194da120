"""``tailrunner plugins``: the installed plugins, their activities, and why any failed to load.

:data:`COMMANDS` is what :mod:`tailrunner.cli.main` registers.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from tailrunner.activities.decorator import Activity
from tailrunner.cli.terminal import printable
from tailrunner.config import Config, load_config
from tailrunner.errors import ConfigError
from tailrunner.plugins import (
    ENTRY_POINT_GROUP,
    PluginInfo,
    PluginSet,
    is_enabled,
    load_plugins,
)


@click.command("plugins")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="TOML config (for activities.enabled, plugins.strict and [log]);"
    " without it, defaults and TAILRUNNER_* variables.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
@click.option(
    "--strict/--no-strict",
    default=None,
    help="Exit with status 1 when a plugin failed to load.  [default: plugins.strict]",
)
def plugins(config_path: Path | None, as_json: bool, strict: bool | None) -> None:
    """List the installed plugins, their activities, and the plugins that failed to load.

    Plugins are found through the entry-point group "tailrunner". Each
    activity is shown with the aggregate types it follows, and marked when
    activities.enabled leaves it out. A plugin that failed is listed
    with its error; the exit status is still 0 unless --strict (or
    plugins.strict in the config) is set.

    \b
    Examples:
      tailrunner plugins
      tailrunner plugins --config config/lazy.toml --strict
      tailrunner plugins --json | jq '.plugins[] | select(.error)'
    """
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(printable(str(exc))) from None
    from tailrunner.logs import configure_logging

    configure_logging(config.log.format, config.log.level)
    # Never strict while loading: the listing should show every failure, not the first.
    found = load_plugins(strict=False)
    if as_json:
        click.echo(json.dumps(_as_json(found, config), indent=2))
    else:
        click.echo(_as_text(found, config))
    failed = found.errors
    if failed and (config.plugins.strict if strict is None else strict):
        names = printable(", ".join(p.name for p in failed))
        raise click.ClickException(f"plugins failed to load (strict): {names}")


def _enabled(found: PluginSet, config: Config, name: str) -> bool:
    return is_enabled(found.activities[name], config.activities.enabled)


def _settings(act: Activity) -> list[dict[str, Any]]:
    """The settings an activity declares: each field's name, type and default."""
    if act.settings_type is None:
        return []
    shown = []
    for f in dataclasses.fields(act.settings_type):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if isinstance(default, timedelta):
            default = f"{default.total_seconds():g}s"
        elif isinstance(default, tuple):
            default = list(default)
        shown.append({"name": f.name, "required": default is None, "default": default})
    return shown


def _as_json(found: PluginSet, config: Config) -> dict[str, Any]:
    return {
        "group": ENTRY_POINT_GROUP,
        "plugins": [
            {
                "name": plugin.name,
                "dist": plugin.dist,
                "version": plugin.version,
                "value": plugin.value,
                "error": plugin.error,
                "activities": [
                    {
                        "name": name,
                        "aggregate_types": list(found.activities[name].aggregate_types),
                        "enabled": _enabled(found, config, name),
                        "opt_in": found.activities[name].opt_in,
                        "settings": _settings(found.activities[name]),
                        "description": found.activities[name].description,
                    }
                    for name in plugin.activities
                ],
            }
            for plugin in found.plugins
        ],
    }


def _as_text(found: PluginSet, config: Config) -> str:
    if not found.plugins:
        return f"no plugins installed (entry-point group {ENTRY_POINT_GROUP!r})"
    lines: list[str] = []
    for plugin in found.plugins:
        lines.append(_heading(plugin))
        if plugin.error is not None:
            error = printable(plugin.error)
            lines.append("    " + click.style(f"error: {error}", fg="red", bold=True))
            continue
        if not plugin.activities:
            lines.append("    (no activities)")
        width = max((len(printable(name)) for name in plugin.activities), default=0)
        for name in plugin.activities:
            types = printable(", ".join(found.activities[name].aggregate_types))
            act = found.activities[name]
            off = ""
            if not _enabled(found, config, name):
                why = "opt-in: name it in" if act.opt_in else "not enabled by"
                off = f"  ({why} activities.enabled)"
            lines.append(f"    {printable(name):<{width}}  follows {types}{off}")
            settings = ", ".join(
                f"{s['name']} (required)"
                if s["required"]
                else f"{s['name']} = {json.dumps(s['default'])}"
                for s in _settings(act)
            )
            if settings:
                where = f"[activities.settings.{name}]"
                lines.append(
                    f"    {'':<{width}}  settings {printable(where)}: {printable(settings)}"
                )
    failed = len(found.errors)
    summary = (
        f"{len(found.plugins)} plugin{'s' * (len(found.plugins) != 1)},"
        f" {len(found.activities)} activit{'ies' if len(found.activities) != 1 else 'y'}"
    )
    if failed:
        summary += click.style(f"; {failed} failed to load", fg="red", bold=True)
    lines.append(summary)
    return "\n".join(lines)


def _heading(plugin: PluginInfo) -> str:
    parts = [click.style(printable(plugin.name), bold=True)]
    if plugin.dist is not None:
        parts.append(printable(f"{plugin.dist} {plugin.version}"))
    if plugin.value is not None:
        parts.append(printable(f"({plugin.value})"))
    return "  ".join(parts)


COMMANDS: list[click.Command] = [plugins]
