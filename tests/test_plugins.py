"""Plugin loading: entry points of fake distributions, each plugin failing on its own."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import textwrap
import types
import uuid
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner, Result
from structlog.testing import capture_logs
from ulid import ULID

from tailrunner.activities import (
    EOF,
    Activity,
    ActivityContext,
    EventStream,
    Outcome,
    activity,
    builtin,
    pingregistry,
)
from tailrunner.cli.main import main
from tailrunner.errors import ConfigError, PluginError
from tailrunner.plugins import PluginSet, hookimpl, load_plugins

GOOD = """
from tailrunner.activities import EOF, activity
from tailrunner.plugins import hookimpl

@activity(name="{name}", aggregate_types=["demo", "order"])
async def act(ctx, tail, stream):
    return EOF(tail)

@hookimpl
def tailrunner_activities():
    return [act]
"""

#: Plugin sources that must fail, and what their error says.
BROKEN = {
    "import-error": ("import not_a_module_anywhere\n", "cannot be loaded: ModuleNotFoundError"),
    "syntax-error": ("def (:\n", "cannot be loaded: SyntaxError"),
    "raises": (
        """
        from tailrunner.plugins import hookimpl

        @hookimpl
        def tailrunner_activities():
            raise RuntimeError("no database")
        """,
        "tailrunner_activities raised RuntimeError: no database",
    ),
    "returns-a-number": (
        """
        from tailrunner.plugins import hookimpl

        @hookimpl
        def tailrunner_activities():
            return 42
        """,
        "returned 42 (int); expected an iterable of activities",
    ),
    "returns-none": (
        """
        from tailrunner.plugins import hookimpl

        @hookimpl
        def tailrunner_activities():
            pass
        """,
        "returned None (NoneType); expected an iterable of activities",
    ),
    "returns-a-string": (
        """
        from tailrunner.plugins import hookimpl

        @hookimpl
        def tailrunner_activities():
            return "counter"
        """,
        "returned 'counter' (str)",
    ),
    "undecorated": (
        """
        from tailrunner.plugins import hookimpl

        async def report(ctx, tail, stream):
            return None

        @hookimpl
        def tailrunner_activities():
            return [report]
        """,
        "returned the async function report (not decorated with @activity?) among its activities",
    ),
    "returns-one-activity": (
        """
        from tailrunner.activities import EOF, activity
        from tailrunner.plugins import hookimpl

        @activity(name="single", aggregate_types=["demo"])
        async def single(ctx, tail, stream):
            return EOF(tail)

        @hookimpl
        def tailrunner_activities():
            return single
        """,
        "returned the activity 'single' itself; expected an iterable of activities, e.g. [single]",
    ),
    "misspelt-hook": (
        """
        from tailrunner.plugins import hookimpl

        @hookimpl
        def tailrunner_activites():
            return []
        """,
        "implements unknown hook tailrunner_activites; did you mean tailrunner_activities?",
    ),
    "wrong-arguments": (
        """
        from tailrunner.plugins import hookimpl

        @hookimpl
        def tailrunner_activities(config):
            return []
        """,
        "Argument(s) {'config'} are declared in the hookimpl but can not be found in the hookspec",
    ),
    "twice": (
        """
        from tailrunner.activities import EOF, activity
        from tailrunner.plugins import hookimpl

        @activity(name="twin", aggregate_types=["demo"])
        async def twin(ctx, tail, stream):
            return EOF(tail)

        @hookimpl
        def tailrunner_activities():
            return [twin, twin]
        """,
        "returned activity 'twin' twice",
    ),
}


class Site:
    """A folder on ``sys.path`` with fake installed distributions that have entry points."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def install(
        self,
        dist: str,
        source: str,
        *,
        entry: str | None = None,
        version: str = "1.0",
        attr: str | None = None,
    ) -> str:
        """Install ``dist`` with one entry point (named ``entry``, default ``dist``) to a module."""
        # A fresh module name per test: sys.modules would otherwise hand back
        # an earlier test's module of the same name.
        module = f"{dist.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        self.modules.append(module)
        (self.root / f"{module}.py").write_text(textwrap.dedent(source))
        # As installers name it: importlib.metadata reads the name up to the first "-".
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        target = module if attr is None else f"{module}:{attr}"
        (info / "entry_points.txt").write_text(f"[tailrunner]\n{entry or dist} = {target}\n")
        importlib.invalidate_caches()
        return module


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = Site(tmp_path)
    yield fake
    for module in fake.modules:
        sys.modules.pop(module, None)


#: The activities of tailrunner's own plugins (``builtin``, ``ping-registry``),
#: loaded beside any test plugin.
BUILTIN = frozenset(a.name for own in (builtin, pingregistry) for a in own.tailrunner_activities())


@pytest.fixture
def no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide every installed entry point, tailrunner's own ``builtin`` included."""
    monkeypatch.setattr(
        "tailrunner.plugins.metadata.entry_points", lambda group: metadata.EntryPoints(())
    )


def good(name: str) -> str:
    return GOOD.format(name=name)


def info(plugins: PluginSet, name: str) -> tuple[tuple[str, ...], str | None]:
    [found] = [p for p in plugins.plugins if p.name == name]
    return found.activities, found.error


# --------------------------------------------------------------------------- loading


def test_good_plugin_activities_are_found_with_dist_and_version(site: Site) -> None:
    module = site.install("tr-reports", good("daily-report"), entry="reports", version="2.3.1")

    plugins = load_plugins(strict=False)

    [plugin] = [p for p in plugins.plugins if p.name == "reports"]
    assert plugin.ok
    assert (plugin.dist, plugin.version, plugin.value) == ("tr-reports", "2.3.1", module)
    assert plugin.activities == ("daily-report",)
    activity_ = plugins.activities["daily-report"]
    assert isinstance(activity_, Activity)
    assert activity_.aggregate_types == ("demo", "order")


def test_entry_point_may_name_an_object_in_a_module(site: Site) -> None:
    site.install(
        "objplugin",
        good("obj-act")
        + "\nclass Plugin:\n    tailrunner_activities = staticmethod(tailrunner_activities)\n"
        "\nplugin = Plugin()\n",
        attr="plugin",
    )

    plugins = load_plugins(strict=False)

    assert info(plugins, "objplugin") == (("obj-act",), None)


def test_a_plugin_that_fails_to_import_is_reported_by_name_and_the_others_load(
    site: Site,
) -> None:
    site.install("alpha", good("alpha-act"))
    site.install("broken", "import not_a_module_anywhere\n")
    site.install("omega", good("omega-act"))

    with capture_logs() as logs:
        plugins = load_plugins(strict=False)

    assert {"alpha-act", "omega-act"} <= set(plugins.activities)
    activities, error = info(plugins, "broken")
    assert activities == ()
    assert error is not None
    assert error.startswith("cannot be loaded: ModuleNotFoundError: No module named")
    assert [p.name for p in plugins.errors] == ["broken"]
    [failed] = [e for e in logs if e["event"] == "plugin failed"]
    assert (failed["plugin"], failed["dist"], failed["log_level"]) == ("broken", "broken", "error")
    assert failed["error"] == error


def test_entry_point_naming_a_missing_attribute_is_reported(site: Site) -> None:
    site.install("noattr", good("noattr-act"), attr="nope")

    plugins = load_plugins(strict=False)

    _, error = info(plugins, "noattr")
    assert error is not None and error.startswith("cannot be loaded: AttributeError")
    assert "noattr-act" not in plugins.activities


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_each_kind_of_broken_plugin_is_reported_and_the_others_load(site: Site, kind: str) -> None:
    source, expected = BROKEN[kind]
    site.install("before", good("before-act"))
    site.install(kind, source)
    site.install("after", good("after-act"))

    plugins = load_plugins(strict=False)

    activities, error = info(plugins, kind)
    assert activities == ()
    assert error is not None and expected in error
    assert "\n" not in error
    assert info(plugins, "before") == (("before-act",), None)
    assert info(plugins, "after") == (("after-act",), None)
    assert set(plugins.activities) == {"before-act", "after-act", *BUILTIN}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_strict_turns_each_problem_into_a_plugin_error(site: Site, kind: str) -> None:
    source, expected = BROKEN[kind]
    site.install("fine", good("fine-act"))
    site.install(kind, source)

    with pytest.raises(PluginError) as caught:
        load_plugins(strict=True)

    assert caught.value.plugin == kind
    assert str(caught.value).startswith(f"plugin {kind!r}: ")
    assert expected in str(caught.value)


def test_strict_with_good_plugins_loads_them(site: Site) -> None:
    site.install("fine", good("fine-act"))

    assert "fine-act" in load_plugins(strict=True).activities


def test_duplicate_activity_names_keep_the_first_and_report_the_second(site: Site) -> None:
    site.install("first", good("shared"))
    site.install("second", good("shared"))

    plugins = load_plugins(strict=False)

    assert info(plugins, "first") == (("shared",), None)
    activities, error = info(plugins, "second")
    assert activities == ()
    assert error == "provides activity 'shared', which plugin 'first' provides too"


def test_duplicate_activity_name_is_a_plugin_error_when_strict(site: Site) -> None:
    site.install("first", good("shared"))
    site.install("second", good("shared"))

    with pytest.raises(PluginError, match=r"^plugin 'second': provides activity 'shared'"):
        load_plugins(strict=True)


def test_a_failing_plugin_contributes_none_of_its_activities(site: Site) -> None:
    site.install(
        "half",
        """
        from tailrunner.activities import EOF, activity
        from tailrunner.plugins import hookimpl

        @activity(name="fine-half", aggregate_types=["demo"])
        async def fine(ctx, tail, stream):
            return EOF(tail)

        @hookimpl
        def tailrunner_activities():
            return [fine, "oops"]
        """,
    )

    plugins = load_plugins(strict=False)

    assert "fine-half" not in plugins.activities
    assert info(plugins, "half")[1] == (
        "tailrunner_activities returned 'oops' (str) among its activities;"
        " expected activities made with @activity"
    )


def test_a_plugin_may_yield_its_activities(site: Site) -> None:
    site.install(
        "gen",
        """
        from tailrunner.activities import EOF, activity
        from tailrunner.plugins import hookimpl

        @activity(name="gen-act", aggregate_types=["demo"])
        async def act(ctx, tail, stream):
            return EOF(tail)

        @hookimpl
        def tailrunner_activities():
            yield act
        """,
    )

    assert info(load_plugins(strict=False), "gen") == (("gen-act",), None)


def test_an_unknown_optional_hook_is_fine(site: Site) -> None:
    site.install(
        "future",
        good("future-act")
        + "\n@hookimpl(optionalhook=True)\ndef tailrunner_someday():\n    return None\n",
    )

    assert info(load_plugins(strict=False), "future") == (("future-act",), None)


def test_two_entry_points_with_one_name_report_the_second(site: Site) -> None:
    site.install("dist-a", good("a-act"), entry="same")
    site.install("dist-b", good("b-act"), entry="same")

    plugins = load_plugins(strict=False)

    [first, second] = [p for p in plugins.plugins if p.name == "same"]
    assert first.ok
    assert second.error == "another plugin is already registered under this name"
    assert len(plugins.activities.keys() & {"a-act", "b-act"}) == 1


def test_only_plugins_that_loaded_stay_registered(site: Site) -> None:
    site.install("fine", good("fine-act"))
    site.install("broken", BROKEN["raises"][0])

    plugins = load_plugins(strict=False)

    assert plugins.manager.get_plugin("fine") is not None
    assert plugins.manager.get_plugin("broken") is None


# --------------------------------------------------------------------------- the built-in plugin


def test_the_builtin_activities_load_from_tailrunners_own_entry_point() -> None:
    with capture_logs() as logs:
        plugins = load_plugins(strict=True)

    [own] = [p for p in plugins.plugins if p.name == "builtin"]
    assert (own.dist, own.value, own.error) == (
        "tailrunner",
        "tailrunner.activities.builtin",
        None,
    )
    assert own.activities == ("counter",)
    assert plugins.activities["counter"] is builtin.counter
    assert builtin.counter in plugins.select(["*"])  # what the example configs enable
    assert [e for e in logs if e["log_level"] == "error"] == []


def test_the_ping_registry_activities_load_but_only_a_pattern_naming_them_enables_them() -> None:
    plugins = load_plugins(strict=True)

    [own] = [p for p in plugins.plugins if p.name == "ping-registry"]
    assert (own.dist, own.value, own.error) == (
        "tailrunner",
        "tailrunner.activities.pingregistry",
        None,
    )
    assert own.activities == ("ping-pinger", "ping-summarizer", "ping-index-keeper")
    assert plugins.select(["*"]) == [builtin.counter]
    assert plugins.select(["ping-*"]) == [
        pingregistry.pinger,
        pingregistry.summarizer,
        pingregistry.index_keeper,
    ]


# --------------------------------------------------------------------------- in-process plugins


@activity(name="in-process", aggregate_types=["demo"])
async def in_process(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
    return EOF(tail)


class InProcess:
    @hookimpl
    def tailrunner_activities(self) -> Iterable[Activity]:
        return [in_process]


def test_extra_plugins_load_first_under_their_name() -> None:
    module = types.ModuleType("builtin_acts")
    module.tailrunner_activities = hookimpl(lambda: [in_process])  # type: ignore[attr-defined]

    plugins = load_plugins(strict=True, extra=[module])

    assert plugins.plugins[0].name == "builtin_acts"
    assert plugins.plugins[0].dist is None
    assert plugins.activities["in-process"] is in_process


def test_extra_plugin_objects_are_named_by_their_type() -> None:
    plugins = load_plugins(strict=False, extra=[InProcess()])

    assert info(plugins, "InProcess") == (("in-process",), None)


def test_the_same_activity_from_an_extra_and_an_entry_point_is_a_duplicate(site: Site) -> None:
    site.install("again", good("in-process"))

    plugins = load_plugins(strict=False, extra=[InProcess()])

    assert plugins.activities["in-process"] is in_process
    assert info(plugins, "again")[1] == (
        "provides activity 'in-process', which plugin 'InProcess' provides too"
    )


# --------------------------------------------------------------------------- select


@pytest.fixture
def three(no_installed_plugins: None) -> PluginSet:
    acts = []
    for name in ("counter", "report-daily", "report-weekly"):

        async def func(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
            return EOF(tail)

        acts.append(Activity(name=name, aggregate_types=("demo",), func=func))

    class Plugin:
        @hookimpl
        def tailrunner_activities(self) -> Iterable[Activity]:
            return acts

    return load_plugins(strict=True, extra=[Plugin()])


@pytest.mark.parametrize(
    ("enabled", "expected"),
    [
        (["*"], ["counter", "report-daily", "report-weekly"]),
        (["report-*"], ["report-daily", "report-weekly"]),
        (["report-weekly", "counter"], ["counter", "report-weekly"]),
        (["counter", "c*"], ["counter"]),
    ],
)
def test_select_matches_names_and_globs_in_load_order(
    three: PluginSet, enabled: list[str], expected: list[str]
) -> None:
    assert [a.name for a in three.select(enabled)] == expected


def test_select_names_the_pattern_that_matches_nothing(three: PluginSet) -> None:
    with pytest.raises(ConfigError) as caught:
        three.select(["counter", "countr"], origin="config/lazy.toml")

    assert str(caught.value) == (
        'activities.enabled = ["counter", "countr"] in config/lazy.toml: "countr" matches no'
        " activity; did you mean counter? (known activities: counter, report-daily, report-weekly)"
    )


def test_select_with_no_activities_says_so(no_installed_plugins: None) -> None:
    empty = load_plugins(strict=True, extra=[])

    with pytest.raises(ConfigError, match=r'"\*" matches no activity \(no plugin provides'):
        empty.select(["*"])


def test_select_of_nothing_is_an_error(three: PluginSet) -> None:
    with pytest.raises(ConfigError, match=r"^activities\.enabled = \[\]: selects no activity"):
        three.select([])


def test_no_plugins_installed_is_not_an_error(no_installed_plugins: None) -> None:
    with capture_logs() as logs:
        plugins = load_plugins(strict=True)

    assert [e for e in logs if e["log_level"] == "error"] == []
    assert all(p.ok for p in plugins.plugins)


# --------------------------------------------------------------------------- the command


@pytest.fixture
def cli(site: Site) -> Iterator[Callable[..., Result]]:
    """Run ``tailrunner …`` in process; put back the logging it configures."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    yield invoke
    structlog.reset_defaults()
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_plugins_command_lists_plugins_activities_and_errors_with_status_0(
    site: Site, cli: Callable[..., Result]
) -> None:
    module = site.install("tr-reports", good("daily-report"), entry="reports", version="2.3.1")
    site.install("broken", "import not_a_module_anywhere\n")

    result = cli("plugins")

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    reports = lines.index(f"reports  tr-reports 2.3.1  ({module})")
    assert lines[reports + 1] == "    daily-report  follows demo, order"
    broken = next(i for i, line in enumerate(lines) if line.startswith("broken  broken 1.0"))
    assert lines[broken + 1].startswith(
        "    error: cannot be loaded: ModuleNotFoundError: No module named"
    )
    assert lines[-1].endswith("; 1 failed to load")
    # The log says it too, with the traceback, on standard error.
    assert '"event": "plugin failed"' in result.stderr


def test_plugins_command_lists_the_builtin_counter(cli: Callable[..., Result]) -> None:
    result = cli("plugins")

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    heading = next(i for i, line in enumerate(lines) if line.startswith("builtin  tailrunner "))
    assert lines[heading].endswith("  (tailrunner.activities.builtin)")
    assert lines[heading + 1] == "    counter  follows demo"


def test_plugins_command_marks_activities_left_out_by_config(
    site: Site, cli: Callable[..., Result]
) -> None:
    site.install("reports", good("daily-report"))
    site.install("tallies", good("tally"))

    result = cli("plugins", env={"TAILRUNNER_ACTIVITIES__ENABLED": "tally"})

    assert "    daily-report  follows demo, order  (not enabled by activities.enabled)" in (
        result.stdout.splitlines()
    )
    assert "    tally  follows demo, order" in result.stdout.splitlines()


def test_plugins_command_json(site: Site, cli: Callable[..., Result]) -> None:
    module = site.install("reports", good("daily-report"), version="0.4")
    site.install("broken", BROKEN["returns-a-number"][0])

    result = cli("plugins", "--json", env={"TAILRUNNER_LOG__LEVEL": "error"})

    assert result.exit_code == 0
    listing = json.loads(result.stdout)
    by_name = {p["name"]: p for p in listing["plugins"]}
    assert by_name["reports"] == {
        "name": "reports",
        "dist": "reports",
        "version": "0.4",
        "value": module,
        "error": None,
        "activities": [
            {
                "name": "daily-report",
                "aggregate_types": ["demo", "order"],
                "enabled": True,
                "opt_in": False,
                "settings": [],
                "description": "",
            }
        ],
    }
    assert by_name["broken"]["activities"] == []
    assert "expected an iterable of activities" in by_name["broken"]["error"]


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--strict"], {}), ([], {"TAILRUNNER_PLUGINS__STRICT": "true"})],
    ids=["flag", "config"],
)
def test_plugins_command_strict_exits_1_after_listing_everything(
    site: Site, cli: Callable[..., Result], args: list[str], env: dict[str, str]
) -> None:
    site.install("broken", "import not_a_module_anywhere\n")
    site.install("reports", good("daily-report"))

    result = cli("plugins", *args, env=env)

    assert result.exit_code == 1
    assert "daily-report" in result.stdout
    assert "error: cannot be loaded" in result.stdout
    assert "Error: plugins failed to load (strict): broken" in result.stderr


def test_plugins_command_no_strict_overrides_the_config(
    site: Site, cli: Callable[..., Result]
) -> None:
    site.install("broken", "import not_a_module_anywhere\n")

    result = cli("plugins", "--no-strict", env={"TAILRUNNER_PLUGINS__STRICT": "true"})

    assert result.exit_code == 0


def test_plugins_command_names_a_bad_config_value(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[log]\nlevel = "loud"\n')

    result = cli("plugins", "--config", str(config))

    assert result.exit_code == 1
    assert f'Error: log.level = "loud" in {config}: expected one of' in result.stderr
