"""Config: the defaults, the environment wins, and every bad value is named.

The example configs have their own tests: tests/test_example_configs.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tailrunner.config import (
    ActivitiesConfig,
    Config,
    TailsConfig,
    load_config,
    parse_duration,
)
from tailrunner.engines.options import EngineOptions
from tailrunner.engines.retry import RetryPolicy
from tailrunner.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "tailrunner.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path | None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ or {})
    return str(caught.value)


# --------------------------------------------------------------------------- defaults


def test_no_file_and_no_environment_gives_the_defaults() -> None:
    config = load_config(None, {})

    assert config == Config(tails=TailsConfig(store=f"sqlite:///{Path.cwd() / 'tails.db'}"))
    assert config.engine == EngineOptions(kind="lazy", capacity=100, backstop=300.0)
    assert config.retry == RetryPolicy(
        initial=1.0, multiplier=2.0, max_delay=300.0, jitter=0.2, max_attempts=None
    )
    assert config.activities.enabled == ("*",)
    assert config.tails.store == f"sqlite:///{Path.cwd() / 'tails.db'}", "beside no file: here"
    assert (config.log.format, config.log.level) == ("auto", "info")
    assert config.plugins.strict is False
    assert config.journal.address == "127.0.0.1:7740"
    assert config.origin("engine.kind") == "the defaults"


def test_config_is_frozen() -> None:
    config = load_config(None, {})

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.engine.kind = "eager"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.activities.limits["counter"] = 3  # type: ignore[index]


def test_environ_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILRUNNER_ENGINE__KIND", "cron")

    assert load_config(None).engine.kind == "cron"


# --------------------------------------------------------------------------- environment


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [engine]
        kind = "lazy"
        capacity = 10
        [retry]
        max_attempts = 2
        [activities.limits]
        counter = 1
        report = 2
        """,
    )

    config = load_config(
        path,
        {
            "TAILRUNNER_ENGINE__KIND": "eager",
            "TAILRUNNER_RETRY__MAX_ATTEMPTS": "5",
            "TAILRUNNER_ACTIVITIES__LIMITS__COUNTER": "3",
            "TAILRUNNER_PLUGINS__STRICT": "true",
            "TAILRUNNER_ENGINE__BACKSTOP": "90",
        },
    )

    assert config.engine.kind == "eager"
    assert config.engine.capacity == 10
    assert config.retry.max_attempts == 5
    assert dict(config.activities.limits) == {"counter": 3, "report": 2}
    assert config.plugins.strict is True
    assert config.engine.backstop == 90.0
    assert config.origin("engine.kind") == "TAILRUNNER_ENGINE__KIND"
    assert config.origin("engine.capacity") == str(path)
    assert config.origin("activities.limits.counter") == "TAILRUNNER_ACTIVITIES__LIMITS__COUNTER"


def test_environment_values_parse_as_toml_when_they_can() -> None:
    config = load_config(
        None,
        {
            "TAILRUNNER_ACTIVITIES__ENABLED": '["counter", "report-*"]',
            "TAILRUNNER_RETRY__JITTER": "0.5",
            "TAILRUNNER_ENGINE__INTERVAL": "*/10 * * * *",
            "TAILRUNNER_LOG__LEVEL": "DEBUG",
        },
    )

    assert config.activities.enabled == ("counter", "report-*")
    assert config.retry.jitter == 0.5
    assert config.engine.cron == "*/10 * * * *"
    assert config.engine.interval is None
    assert config.log.level == "debug"


def test_environment_text_keys_take_the_text_as_it_is() -> None:
    config = load_config(
        None, {"TAILRUNNER_JOURNAL__ADDRESS": "journal:7740", "TAILRUNNER_ENGINE__KIND": '"cron"'}
    )

    assert config.journal.address == "journal:7740"
    assert config.engine.kind == "cron"


def test_environment_list_may_be_comma_separated() -> None:
    config = load_config(None, {"TAILRUNNER_ACTIVITIES__ENABLED": "counter, report-*"})

    assert config.activities.enabled == ("counter", "report-*")


def test_environment_may_set_a_whole_table() -> None:
    config = load_config(
        None,
        {
            "TAILRUNNER_ACTIVITIES__LIMITS": "{ counter = 2, report = 4 }",
            "TAILRUNNER_ACTIVITIES__RETRY__COUNTER__MAX_ATTEMPTS": "7",
        },
    )

    assert dict(config.activities.limits) == {"counter": 2, "report": 4}
    assert config.activities.retry["counter"].max_attempts == 7
    assert config.origin("activities.limits.report") == "TAILRUNNER_ACTIVITIES__LIMITS"


def test_other_tailrunner_variables_are_ignored() -> None:
    config = load_config(None, {"TAILRUNNER_CONFIG": "x.toml", "PATH": "/bin", "HOME": "/root"})

    assert config == Config(tails=TailsConfig(store=f"sqlite:///{Path.cwd() / 'tails.db'}"))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("TAILRUNNER_ENGINE_KIND", "did you mean TAILRUNNER_ENGINE__KIND?"),
        ("TAILRUNNER_LOG_LEVEL", "did you mean TAILRUNNER_LOG__LEVEL?"),
        ("TAILRUNNER_ENGINE", "did you mean TAILRUNNER_ENGINE__KIND?"),
    ],
)
def test_single_underscore_override_is_a_typo(name: str, expected: str) -> None:
    message = error_of(None, {name: "eager"})

    assert message.startswith(f"{name}: ")
    assert expected in message


def test_environment_variable_is_named_as_the_origin_of_a_bad_value(tmp_path: Path) -> None:
    path = write(tmp_path, '[engine]\nkind = "lazy"\n')

    message = error_of(path, {"TAILRUNNER_ENGINE__KIND": "lazzy"})

    assert message == (
        'engine.kind = "lazzy" in TAILRUNNER_ENGINE__KIND: expected one of lazy, eager, cron'
    )


def test_environment_unknown_key_is_named(tmp_path: Path) -> None:
    message = error_of(None, {"TAILRUNNER_ENGINE__KINDS": "eager"})

    assert message.startswith(
        "engine.kinds = (value hidden) in TAILRUNNER_ENGINE__KINDS: unknown key"
    )
    assert "did you mean engine.kind?" in message


def test_environment_key_under_a_value_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[engine]\nkind = "lazy"\n')

    message = error_of(path, {"TAILRUNNER_ENGINE__KIND__X": "1"})

    assert message == 'TAILRUNNER_ENGINE__KIND__X: engine.kind is "lazy", not a table'


# --------------------------------------------------------------------------- bad values

BAD_VALUES = [
    # (toml, key, shown value, what the message says is allowed)
    ('[engine]\nkind = "lazzy"', "engine.kind", '"lazzy"', "expected one of lazy, eager, cron"),
    ("[engine]\nkind = 1", "engine.kind", "1", "expected one of lazy, eager, cron"),
    ("[engine]\ncapacity = 0", "engine.capacity", "0", "at least 1"),
    ('[engine]\ncapacity = "10"', "engine.capacity", '"10"', "whole number"),
    ("[engine]\ncapacity = 2.5", "engine.capacity", "2.5", "whole number"),
    ("[engine]\ncapacity = true", "engine.capacity", "true", "whole number"),
    ('[engine]\nbackstop = "5 minutes"', "engine.backstop", '"5 minutes"', "duration"),
    ('[engine]\nbackstop = "0s"', "engine.backstop", '"0s"', "positive duration"),
    ("[engine]\nbackstop = -3", "engine.backstop", "-3", "duration"),
    # Longer ones overflow the clocks they are added to (the admin's next-run times).
    ("[engine]\nbackstop = 1e20", "engine.backstop", "1e+20", "at most 100 years"),
    ('[engine]\nshutdown_grace = "900000h"', "engine.shutdown_grace", '"900000h"', "100 years"),
    ('[engine]\ninterval = "*/5 * * *"', "engine.interval", '"*/5 * * *"', "cron expression"),
    ('[engine]\ninterval = "61 * * * *"', "engine.interval", '"61 * * * *"', "cron expression"),
    ('[engine]\ninterval = "0 0 * * * *"', "engine.interval", '"0 0 * * * *"', "5-field"),
    ("[engine]\ninterval = 0", "engine.interval", "0", "positive duration"),
    ('[engine]\ndiscovery_interval = "soon"', "engine.discovery_interval", '"soon"', "duration"),
    ('[retry]\ninitial = "1x"', "retry.initial", '"1x"', "duration"),
    ('[retry]\ninitial = "10m"', "retry.initial", '"10m"', "must not exceed retry.max_delay"),
    (
        '[retry]\ninitial = "2s"\nmax_delay = "1s"',
        "retry.max_delay",
        '"1s"',
        'must be at least retry.initial = "2s"',
    ),
    ("[retry]\nmultiplier = 0.5", "retry.multiplier", "0.5", "must be at least 1"),
    ('[retry]\nmultiplier = "x"', "retry.multiplier", '"x"', "expected a number"),
    ("[retry]\njitter = 1.5", "retry.jitter", "1.5", "from 0 to 1"),
    ("[retry]\njitter = -0.1", "retry.jitter", "-0.1", "from 0 to 1"),
    ("[retry]\nmax_attempts = -1", "retry.max_attempts", "-1", "0 (retry forever)"),
    ("[retry]\nmax_attempts = 1.5", "retry.max_attempts", "1.5", "whole number"),
    ('[activities]\nenabled = "counter"', "activities.enabled", '"counter"', "list of activity"),
    ('[activities]\nenabled = [""]', "activities.enabled", '[""]', "list of activity"),
    ("[activities.limits]\ncounter = 0", "activities.limits.counter", "0", "at least 1"),
    ("[activities]\nlimits = 3", "activities.limits", "3", "expected a table"),
    ("[activities.retry]\ncounter = 3", "activities.retry.counter", "3", "expected a table"),
    (
        '[activities.retry.counter]\ninitial = "10m"',
        "activities.retry.counter.initial",
        '"10m"',
        "must not exceed retry.max_delay",
    ),
    (
        "[activities.retry.counter]\njitter = 3",
        "activities.retry.counter.jitter",
        "3",
        "from 0 to 1",
    ),
    ('[tails]\nstore = "redis://x"', "tails.store", '"redis://x"', "memory:, sqlite:///PATH"),
    ('[tails]\nstore = "sqlite:///"', "tails.store", '"sqlite:///"', "memory:, sqlite:///PATH"),
    (
        '[tails]\nstore = "mysql://me:secret@db/x"',
        "tails.store",
        '"mysql://me:***@db/x"',
        "postgresql://",
    ),
    ('[log]\nformat = "xml"', "log.format", '"xml"', "expected one of auto, console, json"),
    ('[log]\nlevel = "verbose"', "log.level", '"verbose"', "debug, info, warning, error"),
    ('[plugins]\nstrict = "yes"', "plugins.strict", '"yes"', "expected true or false"),
    ('[journal]\naddress = "localhost"', "journal.address", '"localhost"', "HOST:PORT"),
    ('[journal]\naddress = "h:99999"', "journal.address", '"h:99999"', "HOST:PORT"),
    ('engine = "eager"', "engine", '"eager"', "expected a table [engine]"),
    # Not a number a policy can compute with: refused by key, never at the second failure.
    ("[retry]\nmultiplier = nan", "retry.multiplier", "nan", "expected a finite number"),
    ("[retry]\nmultiplier = inf", "retry.multiplier", "inf", "expected a finite number"),
    ("[retry]\njitter = nan", "retry.jitter", "nan", "expected a finite number"),
    ("[retry]\ninitial = nan", "retry.initial", "nan", "duration"),
    ("[retry]\nmax_delay = inf", "retry.max_delay", "inf", "duration"),
    ("[engine]\ncapacity = 10000000000000000000000", "engine.capacity", "1" + "0" * 22, "at most"),
    (
        "[retry]\nmax_attempts = 9223372036854775808",
        "retry.max_attempts",
        "9223372036854775808",
        "at most",
    ),
    # A NUL crashes the SQLite driver at start: refused here, by key.
    (
        '[tails]\nstore = "sqlite:///\\u0000x.db"',
        "tails.store",
        '"sqlite:///\\u0000x.db"',
        "U+0000",
    ),
    ('[tails]\nstore = "sqlite:///%00x.db"', "tails.store", '"sqlite:///%00x.db"', "U+0000"),
    ('[tails]\nstore = "sqlite:///a\\nb.db"', "tails.store", '"sqlite:///a\\nb.db"', "U+000A"),
    ('[tails]\npostgres_schema = "a\\n"', "tails.postgres_schema", '"a\\n"', "SQL identifier"),
    ('[admin]\ntoken_env = "A\\n"', "admin.token_env", "(value hidden)", "variable name"),
    ('[journal]\naddress = "dns://h\\u0000:1"', "journal.address", '"dns://h\\u0000:1"', "HOST"),
    ('[admin]\nlisten = "h\\u0000:1"', "admin.listen", '"h\\u0000:1"', "HOST:PORT"),
]


@pytest.mark.parametrize(
    ("text", "key", "shown", "allowed"), BAD_VALUES, ids=[case[1] for case in BAD_VALUES]
)
def test_bad_value_names_key_value_origin_and_what_is_allowed(
    tmp_path: Path, text: str, key: str, shown: str, allowed: str
) -> None:
    path = write(tmp_path, text + "\n")

    message = error_of(path, {})

    assert message.startswith(f"{key} = {shown} in {path}: ")
    assert allowed in message
    assert "\n" not in message


def test_bad_value_message_reads_as_one_sentence(tmp_path: Path) -> None:
    path = write(tmp_path, '[engine]\nkind = "lazzy"\n', name="lazy.toml")

    assert error_of(path) == (f'engine.kind = "lazzy" in {path}: expected one of lazy, eager, cron')


# --------------------------------------------------------------------------- unknown keys


# An unknown key's value is never shown: it may be a secret put in the wrong place.
@pytest.mark.parametrize(
    ("text", "start", "suggestion"),
    [
        ('[engine]\nknid = "eager"', "engine.knid = (value hidden)", "did you mean engine.kind?"),
        (
            "[retry]\nmax_attempt = 3",
            "retry.max_attempt = (value hidden)",
            "did you mean retry.max_attempts?",
        ),
        ('[engnie]\nkind = "eager"', "engnie = (value hidden)", "did you mean [engine]?"),
        ('kind = "eager"', "kind = (value hidden)", "did you mean engine.kind?"),
        (
            "[activities]\nlimit = {}",
            "activities.limit = (value hidden)",
            "did you mean activities.limits?",
        ),
        (
            "[activities.retry.counter]\nintial = 2",
            "activities.retry.counter.intial = (value hidden)",
            "did you mean activities.retry.counter.initial?",
        ),
        ("[admn]\nlisten = 1", "admn = (value hidden)", "unknown section"),
    ],
)
def test_unknown_key_is_an_error_that_suggests_the_right_one(
    tmp_path: Path, text: str, start: str, suggestion: str
) -> None:
    path = write(tmp_path, text + "\n")

    message = error_of(path)

    assert message.startswith(f"{start} in {path}: unknown ")
    assert suggestion in message


def test_unknown_key_lists_the_known_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "[log]\ncolour = true\n")

    assert error_of(path) == (
        f"log.colour = (value hidden) in {path}: unknown key (known keys: format, level)"
    )


# --------------------------------------------------------------------------- files


def test_missing_file_is_named(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.toml") == f"config file {tmp_path / 'nope.toml'}: not found"


def test_invalid_toml_is_named_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[engine]\nkind = lazy\n")

    message = error_of(path)

    assert message.startswith(f"config file {path}: not valid TOML: ")
    assert "line 2" in message


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1m30s500ms", 90.5),
        ("1.5s", 1.5),
        (" 2m ", 120.0),
        ("90", 90.0),
        ("0.5", 0.5),
        (90, 90.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_durations_parse(text: str | float, seconds: float) -> None:
    assert parse_duration(text, key="engine.backstop") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5 minutes", "1x", "-1s", "1h-5m", "m5", "inf", "1d"])
def test_bad_durations_name_the_key(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^engine\.backstop = .*: expected a duration"):
        parse_duration(text, key="engine.backstop")


def test_durations_in_config_become_seconds(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [engine]
        backstop = "1h30m"
        interval = "250ms"
        discovery_interval = 45
        [retry]
        initial = "500ms"
        max_delay = "2m"
        max_attempts = 0
        """,
    )

    config = load_config(path, {})

    assert config.engine.backstop == 5400.0
    assert (config.engine.interval, config.engine.cron) == (0.25, None)
    assert config.engine.discovery_interval == 45.0
    assert config.retry == RetryPolicy(initial=0.5, max_delay=120.0, max_attempts=None)


@pytest.mark.parametrize("expression", ["@hourly", "0 9 * * mon-fri", "*/15  *  *  *  *"])
def test_interval_accepts_cron_expressions(tmp_path: Path, expression: str) -> None:
    path = write(tmp_path, f'[engine]\ninterval = "{expression}"\n')

    config = load_config(path, {})

    assert config.engine.interval is None
    assert config.engine.cron == " ".join(expression.split())


def test_activity_retry_overrides_inherit_the_global_retry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [retry]
        initial = "2s"
        max_attempts = 4
        [activities.retry.counter]
        max_attempts = 0
        max_delay = "1m"
        [activities.retry."report.daily"]
        jitter = 0
        """,
    )

    config = load_config(path, {})

    assert config.activities.retry["counter"] == RetryPolicy(
        initial=2.0, max_delay=60.0, max_attempts=None
    )
    assert config.activities.retry["report.daily"] == RetryPolicy(
        initial=2.0, jitter=0.0, max_attempts=4
    )


def test_relative_sqlite_store_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", '[tails]\nstore = "sqlite:///data/tails.db"\n')
    monkeypatch.chdir(tmp_path)

    from_file = load_config(Path("etc") / path.name, {})
    from_env = load_config(path, {"TAILRUNNER_TAILS__STORE": "sqlite:///tails.db"})
    absolute = load_config(None, {"TAILRUNNER_TAILS__STORE": "sqlite:////var/lib/t.db"})

    assert from_file.tails.store == f"sqlite:///{tmp_path / 'etc' / 'data' / 'tails.db'}"
    assert from_env.tails.store == f"sqlite:///{tmp_path / 'tails.db'}"
    assert absolute.tails.store == "sqlite:////var/lib/t.db"


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        ("memory:", "memory:"),
        ("memory://", "memory:"),
        ("postgresql://tr@db/tails", "postgresql://tr@db/tails"),
    ],
)
def test_store_urls(store: str, expected: str) -> None:
    assert load_config(None, {"TAILRUNNER_TAILS__STORE": store}).tails.store == expected


# --------------------------------------------------------------------------- after plugins


def test_limits_for_unknown_activities_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[activities.limits]\ncountr = 2\n")
    config = load_config(path, {})

    with pytest.raises(ConfigError) as caught:
        config.check_activity_names({"counter", "report"})

    assert str(caught.value) == (
        f"activities.limits.countr = 2 in {path}: no such activity; did you mean counter?"
        " (known activities: counter, report)"
    )


def test_retry_overrides_for_unknown_activities_are_named() -> None:
    config = load_config(None, {"TAILRUNNER_ACTIVITIES__RETRY__NOPE__JITTER": "0"})

    with pytest.raises(ConfigError, match=r"^\[activities\.retry\.nope\] in TAILRUNNER_"):
        config.check_activity_names(["counter"])


def test_known_activity_names_pass() -> None:
    config = load_config(None, {"TAILRUNNER_ACTIVITIES__LIMITS__COUNTER": "2"})

    config.check_activity_names(["counter"])


def test_engine_options_carry_the_engine_retry_and_activity_settings() -> None:
    config = load_config(
        None,
        {
            "TAILRUNNER_ENGINE__KIND": "cron",
            "TAILRUNNER_ENGINE__INTERVAL": "@hourly",
            "TAILRUNNER_ACTIVITIES__LIMITS__COUNTER": "2",
            "TAILRUNNER_ACTIVITIES__RETRY__COUNTER__MAX_ATTEMPTS": "3",
        },
    )

    options = config.engine

    assert (options.kind, options.interval, options.cron) == ("cron", None, "@hourly")
    assert options.retry == config.retry
    assert dict(options.activity_limits) == {"counter": 2}
    assert options.retry_overrides["counter"].max_attempts == 3


def test_sections_can_be_built_directly_for_tests() -> None:
    config = Config(activities=ActivitiesConfig(enabled=("counter",)))

    assert config.activities.enabled == ("counter",)
    assert config.origin("activities.enabled") == "the defaults"


def test_tails_postgres_schema_and_retention(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[tails]\npostgres_schema = "runner_a"\nrun_retention = 10\n')
    config = load_config(path, environ={})
    assert (config.tails.postgres_schema, config.tails.run_retention) == ("runner_a", 10)
    env = {"TAILRUNNER_TAILS__POSTGRES_SCHEMA": "bad-name;drop"}
    with pytest.raises(ConfigError, match=r"tails.postgres_schema.*SQL identifier"):
        load_config(path, environ=env)


def test_admin_and_metrics_sections(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(
        '[admin]\nlisten = "127.0.0.1:0"\ntoken_env = "MY_TOKEN"\n[metrics]\nlisten = ""\n'
    )
    config = load_config(path, environ={})
    assert (config.admin.listen, config.admin.token_env) == ("127.0.0.1:0", "MY_TOKEN")
    assert config.metrics.listen == "", "empty turns /metrics off"
    with pytest.raises(ConfigError, match=r"admin.token_env.*environment variable name"):
        load_config(path, environ={"TAILRUNNER_ADMIN__TOKEN_ENV": "not a name"})


def test_the_admin_token_variable_is_not_mistaken_for_an_override() -> None:
    config = load_config(None, {"TAILRUNNER_ADMIN_TOKEN": "s3cret"})
    assert config.admin.token_env == "TAILRUNNER_ADMIN_TOKEN"


@pytest.mark.parametrize("name", ["TAILRUNNER_JOURNAL", "TAILRUNNER_ADMIN"])
def test_the_cli_address_variables_are_not_taken_for_misspelt_overrides(name: str) -> None:
    # `tailrunner status` and `append` read these; exporting one must not
    # keep `tailrunner run` from starting.
    config = load_config(None, environ={name: "127.0.0.1:7740"})
    assert config.journal.address


def test_every_public_class_of_the_config_module_is_exported() -> None:
    import inspect

    import tailrunner.config as config

    public = {
        name
        for name, value in vars(config).items()
        if not name.startswith("_")
        and inspect.isclass(value)
        and value.__module__ == config.__name__
    }
    assert public <= set(config.__all__), sorted(public - set(config.__all__))


# -- [scaleout] ----------------------------------------------------------------------


def test_scaleout_is_off_by_default_with_the_documented_settings() -> None:
    scaleout = load_config(None, {}).scaleout
    assert (scaleout.enabled, scaleout.segments, scaleout.lease, scaleout.slack) == (
        False,
        64,
        15.0,
        1,
    )


def test_scaleout_reads_its_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[tails]\nstore = "postgresql://u:secret@db/x"\n'
        '[scaleout]\nenabled = true\nsegments = 8\nlease = "3s"\nslack = 0\n',
    )
    scaleout = load_config(path, {}).scaleout
    assert (scaleout.enabled, scaleout.segments, scaleout.lease, scaleout.slack) == (
        True,
        8,
        3.0,
        0,
    )


def test_scaleout_needs_the_tails_on_postgresql_and_names_both_keys(tmp_path: Path) -> None:
    path = write(tmp_path, '[tails]\nstore = "sqlite:///t.db"\n[scaleout]\nenabled = true\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    message = str(info.value)
    assert "scaleout.enabled = true" in message and "tails.store = postgresql://" in message
    assert str(path) in message


def test_scaleout_error_names_the_environment_variable_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            {
                "TAILRUNNER_SCALEOUT__ENABLED": "true",
                "TAILRUNNER_TAILS__STORE": "memory:",
            },
        )
    assert "TAILRUNNER_SCALEOUT__ENABLED" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("segments", "0", "at least 1, at most 4096"),
        ("segments", "4097", "at least 1, at most 4096"),
        ("lease", '"0s"', "a positive"),
        ("lease", '"2h"', "at most 3600 seconds"),
        ("slack", "-1", "at least 0"),
    ],
)
def test_bad_scaleout_values_are_named(tmp_path: Path, key: str, value: str, expected: str) -> None:
    path = write(tmp_path, f"[scaleout]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=f"scaleout.{key} = .*{expected}"):
        load_config(path, {})
