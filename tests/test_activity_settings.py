"""Activity settings (``[activities.settings.NAME]``) and opt-in activities."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from ulid import ULID

from tailrunner.activities import EOF, ActivityContext, EventStream, Outcome, activity
from tailrunner.activities.decorator import Activity
from tailrunner.config import load_config
from tailrunner.errors import ConfigError
from tailrunner.plugins import is_enabled


@dataclass(frozen=True, slots=True, kw_only=True)
class Greeter:
    name: str
    times: int = 1
    loud: bool = False
    ratio: float = 0.5
    rooms: tuple[str, ...] = ("*",)
    pause: timedelta = timedelta(seconds=30)

    def __post_init__(self) -> None:
        if self.times < 1:
            raise ValueError(f"times = {self.times}: must be at least 1")


async def _body(ctx: ActivityContext, tail: ULID | None, stream: EventStream) -> Outcome:
    return EOF(tail)


greet = activity(name="greet", aggregate_types=["demo"], settings=Greeter, opt_in=True)(_body)
plain = activity(name="plain", aggregate_types=["demo"])(_body)


def _config(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "runner.toml"
    path.write_text(text)
    return load_config(path, {})


def test_a_table_is_read_into_the_settings_type(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        """
[activities.settings.greet]
name = "server-1"
times = 3
loud = true
ratio = 2
rooms = ["a", "b"]
pause = "1m30s"
""",
    )

    (configured,) = config.configure_activities([greet])

    assert configured.settings == Greeter(
        name="server-1",
        times=3,
        loud=True,
        ratio=2.0,
        rooms=("a", "b"),
        pause=timedelta(seconds=90),
    )
    assert greet.settings is None, "the declared activity is left as it was"


def test_keys_not_set_keep_their_defaults(tmp_path: Path) -> None:
    config = _config(tmp_path, '[activities.settings.greet]\nname = "x"\n')

    (configured,) = config.configure_activities([greet])

    assert configured.settings == Greeter(name="x")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("times = 3", r"activities\.settings\.greet\.name in .*runner\.toml: required \(text\)"),
        (
            'name = "x"\ntimes = "3"',
            r'activities\.settings\.greet\.times = "3" in .*: expected a whole number',
        ),
        ('name = "x"\nloud = 1', r"greet\.loud = 1 in .*: expected true or false"),
        ('name = "x"\nrooms = "a"', r'greet\.rooms = "a" in .*: expected a list of text'),
        ('name = "x"\npause = "soon"', r'greet\.pause = "soon" in .*: expected a duration'),
        ('name = "x"\npause = 1e20', r"greet\.pause = 1e\+20 in .*: expected a duration"),
        (
            'name = "x"\ntimez = 2',
            r"greet\.timez = \(value hidden\) in .*: unknown key;"
            r" did you mean activities\.settings\.greet\.times",
        ),
        ('name = "x"\ntimes = 0', r"\[activities\.settings\.greet\] in .*: times = 0: must be at"),
    ],
)
def test_a_bad_setting_is_named(tmp_path: Path, table: str, message: str) -> None:
    config = _config(tmp_path, f"[activities.settings.greet]\n{table}\n")

    with pytest.raises(ConfigError, match=message):
        config.configure_activities([greet])


def test_an_activity_without_settings_refuses_a_table(tmp_path: Path) -> None:
    config = _config(tmp_path, "[activities.settings.plain]\nx = 1\n")

    with pytest.raises(ConfigError, match=r"activities\.settings\.plain\] .*takes no settings"):
        config.configure_activities([plain])


def test_settings_for_an_unknown_activity_are_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, "[activities.settings.gret]\nname = 1\n")

    with pytest.raises(ConfigError, match=r"activities\.settings\.gret.*no such activity"):
        config.check_activity_names(["greet", "plain"])


def test_a_settings_table_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"activities\.settings\.greet = 3 .*expected a table"):
        _config(tmp_path, "[activities.settings]\ngreet = 3\n")


def test_settings_come_from_the_environment_too(tmp_path: Path) -> None:
    config = load_config(
        None,
        {
            "TAILRUNNER_ACTIVITIES__SETTINGS__GREET__NAME": "from-env",
            "TAILRUNNER_ACTIVITIES__SETTINGS__GREET__TIMES": "4",
        },
    )

    (configured,) = config.configure_activities([greet])

    assert configured.settings == Greeter(name="from-env", times=4)


def test_an_all_default_settings_type_gives_settings_without_config() -> None:
    @dataclass(frozen=True)
    class Quiet:
        level: int = 2

    act = activity(name="quiet", aggregate_types=["demo"], settings=Quiet)(_body)

    assert act.settings == Quiet()
    (configured,) = load_config(None, {}).configure_activities([act])
    assert configured.settings == Quiet()


def test_settings_must_be_a_dataclass() -> None:
    with pytest.raises(TypeError, match="settings must be a dataclass"):
        Activity(name="bad", aggregate_types=("demo",), func=_body, settings_type=dict)


def test_the_catch_all_leaves_out_opt_in_activities() -> None:
    assert not is_enabled(greet, ["*"])
    assert is_enabled(greet, ["greet"])
    assert is_enabled(greet, ["gr*"])
    assert is_enabled(plain, ["*"])
    assert not is_enabled(plain, ["greet"])
