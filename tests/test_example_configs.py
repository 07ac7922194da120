"""The example configs: they load, run the built-in activities and list every key at its default.

The key list comes from the schema in :mod:`tailrunner.config` (its sections
and their keys), so a key added there fails here until each example shows
it: the examples cannot drift from the schema.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tailrunner import config as schema
from tailrunner.activities import builtin
from tailrunner.config import Config, load_config
from tailrunner.plugins import load_plugins

CONFIG_DIR = Path(__file__).parent.parent / "config"
EXAMPLES = sorted(CONFIG_DIR.glob("*.toml"))
EXAMPLE_NAMES = [path.stem for path in EXAMPLES]

#: Every key the schema knows, as (section, key), in the schema's order.
SCHEMA_KEYS = [(section, key) for section in schema._SECTIONS for key in schema._KEYS[section]]

#: The one key whose value makes an example what it is: its file is named after it.
KIND = ("engine", "kind")


def raw(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        return tomllib.load(file)


def value(config: Config, section: str, key: str) -> object:
    return getattr(getattr(config, section), key)


def test_the_examples_cover_lazy_eager_and_cron() -> None:
    assert set(schema.ENGINE_KINDS) == set(EXAMPLE_NAMES)


def test_the_schema_key_list_is_what_the_config_objects_hold() -> None:
    # Guards the derivation: a section or key the parser knows but the
    # objects lack (or the reverse) would make the checks below look elsewhere.
    assert [f.name for f in dataclasses.fields(Config)][: len(schema._SECTIONS)] == list(
        schema._SECTIONS
    )
    for section, key in SCHEMA_KEYS:
        assert hasattr(getattr(Config(), section), key), f"{section}.{key}"


@pytest.mark.parametrize("path", EXAMPLES, ids=EXAMPLE_NAMES)
def test_each_example_lists_every_key_of_the_schema(path: Path) -> None:
    table = raw(path)

    missing = [
        f"{section}.{key}"
        for section, key in SCHEMA_KEYS
        if not isinstance(table.get(section), dict) or key not in table[section]
    ]

    assert missing == [], f"{path.name} does not list these keys"


@pytest.mark.parametrize("path", EXAMPLES, ids=EXAMPLE_NAMES)
def test_each_example_gives_every_key_its_default_but_the_engine_kind(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The defaults as a config beside the example sees them: a relative
    # tails.store resolves against the file's folder, the default's against
    # the working directory.
    monkeypatch.chdir(path.parent)
    defaults = load_config(None, {})

    config = load_config(path, {})

    assert config.path == path
    assert value(config, *KIND) == path.stem
    differ = {
        f"{section}.{key}": (value(config, section, key), value(defaults, section, key))
        for section, key in SCHEMA_KEYS
        if (section, key) != KIND and value(config, section, key) != value(defaults, section, key)
    }
    assert differ == {}, f"{path.name}: key: (value, default)"


@pytest.mark.parametrize("path", EXAMPLES, ids=EXAMPLE_NAMES)
def test_each_key_of_each_example_has_a_comment_line_above_it(path: Path) -> None:
    lines = path.read_text().splitlines()

    bare = [
        line
        for above, line in zip(["", *lines], lines, strict=False)
        if re.match(r"^[A-Za-z_]+ = ", line) and not above.startswith("# ")
    ]
    # A table that is empty by default says what it takes on the line below its header.
    bare_tables = [
        line
        for line, below in zip(lines, [*lines[1:], ""], strict=False)
        if line.startswith("[") and not below.startswith("# ") and not re.match(r"^\w+ = ", below)
    ]

    assert (bare, bare_tables) == ([], [])


@pytest.mark.parametrize("path", EXAMPLES, ids=EXAMPLE_NAMES)
def test_each_example_runs_the_builtin_counter(path: Path) -> None:
    config = load_config(path, {})

    selected = load_plugins(strict=config.plugins.strict).select(config.activities.enabled)

    assert builtin.counter in selected
