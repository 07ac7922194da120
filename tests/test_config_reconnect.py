"""Config: a zero retry delay is refused, and the journal's reconnect policy is its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tailrunner.config import JournalConfig, load_config
from tailrunner.errors import ConfigError
from tailrunner.reconnect import ReconnectPolicy

EXAMPLES = sorted((Path(__file__).parent.parent / "config").glob("*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lazy.toml"
    path.write_text(text)
    return path


def error_of(path: Path | None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ or {})
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "shown_key"),
    [
        ("[retry]\ninitial = 0\n", "retry.initial = 0"),
        ('[retry]\ninitial = "0s"\nmax_delay = "0s"\n', 'retry.initial = "0s"'),
        (
            '[activities.retry.counter]\ninitial = "0ms"\n',
            'activities.retry.counter.initial = "0ms"',
        ),
    ],
)
def test_a_zero_retry_delay_is_refused_naming_the_key(
    tmp_path: Path, text: str, shown_key: str
) -> None:
    path = write(tmp_path, text)

    assert error_of(path) == (
        f"{shown_key} in {path}: must be more than 0 (a failing activity retried without a"
        " wait spins)"
    )


def test_a_zero_retry_delay_from_the_environment_names_the_variable() -> None:
    message = error_of(None, {"TAILRUNNER_RETRY__INITIAL": "0"})

    assert message.startswith("retry.initial = 0 in TAILRUNNER_RETRY__INITIAL: must be more than 0")


def test_reconnect_defaults_to_100ms_doubling_to_5s() -> None:
    config = load_config(None, {})

    assert (config.journal.reconnect_initial, config.journal.reconnect_max_delay) == (0.1, 5.0)
    assert config.journal.reconnect == ReconnectPolicy()
    assert config.engine.reconnect == ReconnectPolicy()


def test_reconnect_keys_are_parsed_as_durations_and_reach_the_engine_options(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, '[journal]\nreconnect_initial = "250ms"\nreconnect_max_delay = "1m"\n')

    config = load_config(path, {"TAILRUNNER_JOURNAL__RECONNECT_MAX_DELAY": "10s"})

    assert config.journal.reconnect == ReconnectPolicy(initial=0.25, max_delay=10.0)
    assert config.engine.reconnect == config.journal.reconnect
    assert config.origin("journal.reconnect_initial") == str(path)
    assert config.origin("journal.reconnect_max_delay") == "TAILRUNNER_JOURNAL__RECONNECT_MAX_DELAY"


@pytest.mark.parametrize(
    ("text", "start", "allowed"),
    [
        ("reconnect_initial = 0", "journal.reconnect_initial = 0", "positive duration"),
        ('reconnect_initial = "soon"', 'journal.reconnect_initial = "soon"', "duration"),
        ('reconnect_max_delay = "0s"', 'journal.reconnect_max_delay = "0s"', "positive duration"),
        ("reconnect_max_delay = -1", "journal.reconnect_max_delay = -1", "duration"),
        (
            'reconnect_initial = "10s"',
            'journal.reconnect_initial = "10s"',
            "must not exceed journal.reconnect_max_delay = 5s (the default)",
        ),
        (
            'reconnect_max_delay = "50ms"',
            'journal.reconnect_max_delay = "50ms"',
            "must be at least journal.reconnect_initial = 0.1s (the default)",
        ),
        (
            'reconnect_initial = "2s"\nreconnect_max_delay = "1s"',
            'journal.reconnect_max_delay = "1s"',
            'must be at least journal.reconnect_initial = "2s"',
        ),
    ],
)
def test_bad_reconnect_values_name_key_value_origin_and_what_is_allowed(
    tmp_path: Path, text: str, start: str, allowed: str
) -> None:
    path = write(tmp_path, f"[journal]\n{text}\n")

    message = error_of(path)

    assert message.startswith(f"{start} in {path}: ")
    assert allowed in message


def test_a_misspelt_reconnect_key_is_named_with_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, '[journal]\nreconnect_inital = "1s"\n')

    assert "did you mean journal.reconnect_initial?" in error_of(path)


def test_journal_config_built_directly_refuses_a_bad_pair() -> None:
    with pytest.raises(ValueError, match=r"reconnect max_delay 1\.0: must be at least"):
        JournalConfig(reconnect_initial=2.0, reconnect_max_delay=1.0)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_shows_the_reconnect_keys_at_their_defaults(path: Path) -> None:
    config = load_config(path, {})

    assert config.journal.reconnect == ReconnectPolicy()
    assert config.origin("journal.reconnect_initial") == str(path)
    assert config.origin("journal.reconnect_max_delay") == str(path)
