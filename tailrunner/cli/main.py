"""``tailrunner``: the command line.

Each command group lives in its own module under :mod:`tailrunner.cli`; this
module only assembles them. Only the CLI configures logging.
"""

from __future__ import annotations

import click

from tailrunner import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tailrunner")
def main() -> None:
    """Run plugin activities over the event streams of event-sourced aggregates.

    \b
    Start here:
      tailrunner demo                          an embedded journal and runner in one process
      tailrunner journal serve                 serve the event journal (SQLite by default)
      tailrunner run --config config/lazy.toml run the activities of installed plugins
    """


def _register() -> None:
    from tailrunner.cli import admin, demo, journal, ops, ping_registry, plugins, run

    for module in (demo, run, journal, plugins, admin, ping_registry, ops):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
