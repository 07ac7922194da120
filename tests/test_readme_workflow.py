"""README's "Writing a workflow" example, taken from README.md and run against a real journal."""

from __future__ import annotations

import re
import sys
import types
import uuid
from pathlib import Path
from typing import Any

import pytest

from tailrunner.activities.pingregistry import PingerSettings
from tailrunner.config import load_config
from tailrunner.errors import WrongState
from tailrunner.plugins import load_plugins
from tailrunner.testing import loopback_journal

README = Path(__file__).parent.parent / "README.md"


def _example(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The example's code block, run as a module of its own (dataclasses look it up)."""
    text = README.read_text()
    section = text.split("## Writing a workflow", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    module = types.ModuleType("readme_workflow")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block, "README.md (Writing a workflow)", "exec"), module.__dict__)
    return module.__dict__


async def test_the_readme_workflow_adds_up_through_the_journal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = _example(monkeypatch)
    tally = uuid.uuid4()
    async with loopback_journal() as journal:
        assert await example["add_up"](journal.client, tally, [1, 2, 0, 40]) == 43
        # The state comes back from the stored events: a second run goes on from it.
        assert await example["add_up"](journal.client, tally, [7]) == 50
        events = [e async for batch in journal.client.events(tally) for e in batch.events]
    assert len(events) == 4, "a command that yields no events appends nothing"


async def test_the_readme_workflow_refuses_a_command_naming_the_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = _example(monkeypatch)
    async with loopback_journal() as journal:
        with pytest.raises(WrongState, match="at 90"):
            await example["add_up"](journal.client, uuid.uuid4(), [90, 20])


def test_the_readme_ping_registry_server_config_configures_a_pinger(tmp_path: Path) -> None:
    text = README.read_text()
    section = text.split("### Ping-registry", 1)[1].split("\n## ", 1)[0]
    server = re.findall(r"```toml\n(.*?)```", section, re.DOTALL)[0]
    path = tmp_path / "server-a.toml"
    path.write_text(server)
    config = load_config(path, {})
    plugins = load_plugins(strict=True)

    (pinger,) = config.configure_activities(plugins.select(config.activities.enabled))

    assert pinger.name == "ping-pinger"
    assert pinger.settings == PingerSettings(name="server-a", registries=("main",), pings=2)
