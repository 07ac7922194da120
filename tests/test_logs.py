"""Logging setup: JSON or console lines, level filtering, the standard library routed through."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from tailrunner.logs import configure_logging


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_level_logger_utc_timestamp_and_fields() -> None:
    out = io.StringIO()
    configure_logging("json", "info", out)

    structlog.get_logger("tailrunner.engines").info("progressed", activity="counter", events=3)

    [event] = lines(out)
    assert event["event"] == "progressed"
    assert event["level"] == "info"
    assert event["logger"] == "tailrunner.engines"
    assert (event["activity"], event["events"]) == ("counter", 3)
    assert event["timestamp"].endswith("Z")
    assert event["timestamp"][:4].isdigit() and "T" in event["timestamp"]


def test_levels_below_the_configured_one_are_dropped() -> None:
    out = io.StringIO()
    configure_logging("json", "warning", out)
    log = structlog.get_logger("t")

    log.debug("a")
    log.info("b")
    log.warning("c")
    log.error("d")

    assert [e["event"] for e in lines(out)] == ["c", "d"]


def test_debug_level_logs_debug() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", out)

    structlog.get_logger("t").debug("detail")

    assert [e["event"] for e in lines(out)] == ["detail"]


def test_standard_library_logs_are_rendered_the_same_from_warning_up() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", out)
    grpc_log = logging.getLogger("grpc._cython.cygrpc")

    grpc_log.info("chatter")
    grpc_log.warning("channel %s closed", "c1")

    [event] = lines(out)
    assert event["event"] == "channel c1 closed"
    assert event["level"] == "warning"
    assert event["logger"] == "grpc._cython.cygrpc"
    assert event["timestamp"].endswith("Z")


def test_standard_library_logs_follow_a_higher_level() -> None:
    out = io.StringIO()
    configure_logging("json", "error", out)

    logging.getLogger("grpc").warning("dropped")
    logging.getLogger("grpc").error("kept")

    assert [e["event"] for e in lines(out)] == ["kept"]


def test_json_exceptions_are_structured_without_local_values() -> None:
    out = io.StringIO()
    configure_logging("json", "info", out)
    secret = "hunter2"

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger("t").exception("failed", key=len(secret))

    [event] = lines(out)
    [exception] = event["exception"]
    assert (exception["exc_type"], exception["exc_value"]) == ("RuntimeError", "boom")
    assert "hunter2" not in out.getvalue()


def test_console_format_writes_readable_lines() -> None:
    out = io.StringIO()
    configure_logging("console", "info", out)

    structlog.get_logger("tailrunner.x").info("started", engine="lazy")
    logging.getLogger("grpc").warning("slow")

    first, second = out.getvalue().splitlines()
    assert "started" in first and "engine=lazy" in first and "[tailrunner.x]" in first
    assert "slow" in second and "warning" in second
    # Not a terminal: no colour codes.
    assert "\x1b[" not in out.getvalue()
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)


def test_auto_is_json_off_a_terminal() -> None:
    out = io.StringIO()
    configure_logging("auto", "info", out)

    structlog.get_logger("t").info("hello")

    assert lines(out)[0]["event"] == "hello"


def test_auto_is_console_on_a_terminal() -> None:
    out = Terminal()
    configure_logging("auto", "info", out)

    structlog.get_logger("t").info("hello")

    text = out.getvalue()
    assert "hello" in text
    assert not text.startswith("{")


def test_configuring_again_replaces_the_previous_configuration() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "info", first)
    log = structlog.get_logger("t")
    log.info("one")

    configure_logging("json", "info", second)
    log.info("two")
    logging.getLogger("grpc").warning("three")

    assert [e["event"] for e in lines(first)] == ["one"]
    assert [e["event"] for e in lines(second)] == ["two", "three"]


def test_logs_go_to_standard_error_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")

    structlog.get_logger("t").info("to stderr")

    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["event"] == "to stderr"


@pytest.mark.parametrize(("format", "level"), [("xml", "info"), ("json", "verbose")])
def test_unknown_format_or_level_is_refused(format: str, level: str) -> None:
    with pytest.raises(ValueError, match="expected one of"):
        configure_logging(format, level, io.StringIO())
