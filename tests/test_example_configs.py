"""The example configs: they load, run the built-in activities and list every key at its default.

The key list comes from the schema in :mod:`tailrunner.config` (its sections
and their keys), so a key added there fails here until each example shows
it: the examples cannot drift from the schema.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tailrunner import config as schema
from tailrunner.activities import builtin
from tailrunner.config import load_config
from tailrunner.plugins import load_plugins

CONFIG_DIR = Path(__file__).parent.parent / "config"
#: The examples that show one engine each, every other key at its default.
ENGINE_EXAMPLES = sorted(p for p in CONFIG_DIR.glob("*.toml") if p.stem in schema.ENGINE_KINDS)
#: The example of a cluster's runner, and the keys where it differs from the defaults.
CLUSTER_EXAMPLE = CONFIG_DIR / "postgres.toml"
CLUSTER_KEYS = {
    "tails.store": "postgresql://postgres@127.0.0.1:5432/test",
    "admin.listen": "127.0.0.1:0",
    "metrics.listen": "127.0.0.1:0",
    "scaleout.enabled": True,
}
EXAMPLES = [*ENGINE_EXAMPLES, CLUSTER_EXAMPLE]
EXAMPLE_NAMES = [path.stem for path in EXAMPLES]
ENGINE_NAMES = [path.stem for path in ENGINE_EXAMPLES]

#: Every key the schema knows, as (section, key), in the schema's order.
SCHEMA_KEYS = [(section, key) for section in schema._SECTIONS for key in schema._KEYS[section]]

#: The one key whose value makes an example what it is: its file is named after it.
KIND = ("engine", "kind")


def raw(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        return tomllib.load(file)


def toml(value: object) -> str:
    """``value`` (as :mod:`tomllib` read it from an example) written back as TOML."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    # JSON writes strings, numbers, true and false as TOML does.
    return json.dumps(value)


def test_the_examples_cover_lazy_eager_and_cron_and_a_cluster() -> None:
    assert set(schema.ENGINE_KINDS) == set(ENGINE_NAMES)
    assert sorted(p.name for p in CONFIG_DIR.glob("*.toml")) == sorted(p.name for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=EXAMPLE_NAMES)
def test_each_example_lists_every_key_of_the_schema(path: Path) -> None:
    table = raw(path)

    missing = [
        f"{section}.{key}"
        for section, key in SCHEMA_KEYS
        if not isinstance(table.get(section), dict) or key not in table[section]
    ]

    assert missing == [], f"{path.name} does not list these keys"


def keys_not_at_their_default(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, skip: set[str]
) -> dict[str, Any]:
    """The keys of example ``path`` whose value is not the default (``skip`` aside)."""
    # Each key on its own, in a file of its own, against no file at all: the
    # loader alone says what a key means (a duration, a pair of settings …),
    # so no key needs to be mapped to the attribute that holds it. The
    # working directory is the file's folder, where a relative default
    # (tails.store) resolves, as for a file.
    monkeypatch.chdir(tmp_path)
    defaults = load_config(None, {})
    table = raw(path)
    one = tmp_path / "one.toml"

    differ = {}
    for section, key in SCHEMA_KEYS:
        if f"{section}.{key}" in skip or key not in table.get(section, {}):
            continue  # the example's point; a missing key fails the test above
        one.write_text(f"[{section}]\n{key} = {toml(table[section][key])}\n")
        try:
            differs = dataclasses.replace(load_config(one, {}), path=None) != defaults
        except schema.ConfigError:
            differs = True  # valid only with the example's other keys (scaleout.enabled)
        if differs:
            differ[f"{section}.{key}"] = table[section][key]
    return differ


@pytest.mark.parametrize("path", ENGINE_EXAMPLES, ids=ENGINE_NAMES)
def test_each_engine_example_loads_as_its_engine_with_every_other_key_at_its_default(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(path, {})
    assert (config.path, config.engine.kind) == (path, path.stem)
    differ = keys_not_at_their_default(path, tmp_path, monkeypatch, skip={".".join(KIND)})
    assert differ == {}, f"{path.name}: these keys are not at their defaults"


def test_the_cluster_example_differs_from_the_defaults_only_where_a_cluster_needs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(CLUSTER_EXAMPLE, {})
    assert config.scaleout.enabled and config.engine.kind == "lazy"
    assert config.tails.store.startswith("postgresql://")
    differ = keys_not_at_their_default(CLUSTER_EXAMPLE, tmp_path, monkeypatch, skip=set())
    assert differ == CLUSTER_KEYS


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
