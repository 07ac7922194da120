"""Config against hostile input: any file, any environment gives a Config or one ConfigError line.

Also: a secret put where config does not take it is never echoed back.
"""

from __future__ import annotations

import math
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tailrunner.config import load_config
from tailrunner.errors import ConfigError

SECRET = "s3cr3t-value"

# Keys that exist, so that generated text reaches the validators, not only the unknown-key check.
_KEYS = {
    "engine": ["kind", "capacity", "backstop", "interval", "discovery_interval", "shutdown_grace"],
    "retry": ["initial", "multiplier", "max_delay", "jitter", "max_attempts"],
    "tails": ["store", "postgres_schema", "run_retention"],
    "journal": ["address", "reconnect_initial", "reconnect_max_delay"],
    "admin": ["listen", "token_env", "token"],
    "metrics": ["listen", "lag_interval"],
    "scaleout": ["enabled", "segments", "lease", "slack"],
    "log": ["format", "level"],
    "activities": ["enabled", "limits", "retry", "settings"],
}
_SECTION_KEYS = [(section, key) for section, keys in _KEYS.items() for key in keys]

_texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20
) | st.sampled_from(
    [
        "nan",
        "inf",
        "-inf",
        "1e200",
        "1e400",
        "sqlite:///\x00x.db",
        "sqlite:///%00x.db",
        "postgresql://me:pw@h/db\n",
        "\u2028",
        "a\x1b[31m",
        "[" * 50 + "]" * 50,
        "0",
        "-1",
        "99999999999999999999999999",
    ]
)
_scalars = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    _texts,
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "token", "x y", "counter"]), inner, max_size=3)
    ),
    max_leaves=6,
)


def _toml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        escaped = "".join(
            c if c.isprintable() and c not in '"\\' else f"\\U{ord(c):08x}" for c in value
        )
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_scalar(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f'"{k}" = {_toml_scalar(v)}' for k, v in value.items()) + "}"


@st.composite
def _toml_documents(draw: st.DrawFn) -> str:
    lines = []
    for section, key in draw(st.lists(st.sampled_from(_SECTION_KEYS), max_size=4, unique=True)):
        lines.append(f"[{section}]\n{key} = {_toml_scalar(draw(_values))}")
    if draw(st.booleans()):
        lines.append(draw(st.text(max_size=30)))  # maybe breaks the syntax
    return "\n".join(lines) + "\n"


_env_names = st.one_of(
    st.sampled_from([f"TAILRUNNER_{s.upper()}__{k.upper()}" for s, k in _SECTION_KEYS]),
    st.text(alphabet=string.ascii_uppercase + "_\n\x1b\u2028", max_size=12).map(
        lambda tail: "TAILRUNNER_" + tail
    ),
)
_env_values = st.one_of(_texts, _values.map(_toml_scalar))


def _check(path: Path | None, environ: dict[str, str]) -> None:
    try:
        config = load_config(path, environ)
    except ConfigError as exc:
        message = str(exc)
        assert message.splitlines() == [message], f"not one line: {message!r}"
        assert message.isprintable(), f"unprintable: {message!r}"
        return
    # What config let through the runner can compute with, at any failure count.
    for policy in (config.retry, *config.activities.retry.values()):
        for failures in (1, 2, 64, 10_000):
            assert 0 <= policy.delay(failures) <= policy.max_delay


_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(data=st.binary(max_size=200))
def test_any_bytes_give_a_config_or_one_error_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_bytes(data)
    _check(path, {})


@_SETTINGS
@given(
    text=_toml_documents(),
    environ=st.dictionaries(_env_names, _env_values, max_size=3),
)
def test_any_toml_and_environment_give_a_config_or_one_error_line(
    tmp_path: Path, text: str, environ: dict[str, str]
) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    _check(path, environ)


@pytest.mark.parametrize(
    ("data", "byte", "offset", "line"),
    [
        ("[engine]\nkind = 'eager'\n".encode("utf-16"), 0xFF, 0, 1),
        (b'[engine]\nkind = "\xff"\n', 0xFF, 17, 2),
        (b"\xef\xbb\xbf[log]\n\xc3", 0xC3, 9, 2),
    ],
    ids=["utf-16", "latin-1 byte", "cut sequence"],
)
def test_a_file_that_is_not_utf8_names_the_first_bad_byte(
    tmp_path: Path, data: bytes, byte: int, offset: int, line: int
) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(data)

    with pytest.raises(ConfigError) as caught:
        load_config(path, {})

    assert str(caught.value).startswith(
        f"config file {path}: not UTF-8 text (byte 0x{byte:02x} at offset {offset}, line {line}:"
    )


@pytest.mark.parametrize("depth", [200, 5_000, 100_000])
@pytest.mark.parametrize(
    ("template", "key"),
    [
        ("[activities.settings.a]\nx = {open}1{close}\n", "activities.settings.a.x"),
        ("x = {open}1{close}\n", "x"),
    ],
)
def test_deeply_nested_values_are_a_config_error(
    tmp_path: Path, depth: int, template: str, key: str
) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(template.format(open="[" * depth, close="]" * depth))

    with pytest.raises(ConfigError) as caught:
        load_config(path, {})

    assert str(caught.value).startswith((f"config file {path}: ", f"{key} in {path}: "))
    assert "nested more than 32 deep" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_deeply_nested_environment_value_is_a_config_error() -> None:
    value = "[" * 5_000 + "]" * 5_000

    with pytest.raises(ConfigError, match="TAILRUNNER_ACTIVITIES__SETTINGS__A"):
        load_config(None, {"TAILRUNNER_ACTIVITIES__SETTINGS__A": f"{{x = {value}}}"})


@pytest.mark.parametrize(
    ("environ", "text"),
    [
        ({"TAILRUNNER_ADMIN__TOKEN": SECRET}, ""),
        ({}, f'[admin]\ntoken = "{SECRET}"\n'),
        ({}, f'[admin]\npassword = "{SECRET}"\n'),
        ({}, f'token = "{SECRET}"\n'),
        ({}, f'[secrets]\ntoken = "{SECRET}"\n'),
        ({}, f'[secrets]\napi_key = "{SECRET}"\n'),
        ({}, f'[admin]\ndb_password = "{SECRET}"\n'),
        ({}, f'[admin]\ntoken = ["{SECRET}"]\n'),
        ({"TAILRUNNER_ADMIN__TOKEN__X": "1"}, f'[admin]\ntoken = "{SECRET}"\n'),
        ({"TAILRUNNER_ADMIN__TOKEN_ENV": SECRET}, ""),
        ({"TAILRUNNER_JOURNAL__SECRET": SECRET}, ""),
        ({"TAILRUNNER_ACTIVITIES__SETTINGS__X__PASSWORD": SECRET}, ""),
    ],
)
def test_a_misplaced_secret_is_never_echoed(
    tmp_path: Path, environ: dict[str, str], text: str
) -> None:
    path = tmp_path / "secret.toml"
    path.write_text(text)

    with pytest.raises(ConfigError) as caught:
        config = load_config(path, environ)
        config.check_activity_names([])  # settings for an activity that is not there

    assert SECRET not in str(caught.value)


def test_a_hidden_secret_still_names_its_key_and_origin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"TAILRUNNER_ADMIN__TOKEN": SECRET})

    assert str(caught.value).startswith(
        "admin.token = (value hidden) in TAILRUNNER_ADMIN__TOKEN: unknown key"
    )


def test_token_env_names_a_variable_and_is_shown() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"TAILRUNNER_ADMIN__TOKEN_ENV": "MY_TOKEN", "TAILRUNNER_LOG__LEVEL": "x"})
    assert "log.level" in str(caught.value)
    assert load_config(None, {"TAILRUNNER_ADMIN__TOKEN_ENV": "MY_TOKEN"}).admin.token_env == (
        "MY_TOKEN"
    )
