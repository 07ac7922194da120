"""``HOST:PORT``: one parser and formatter, IPv6 brackets handled once."""

from __future__ import annotations

import pytest

from tailrunner.address import HostPort, format_host_port, parse_host_port
from tailrunner.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:7740", HostPort("127.0.0.1", 7740)),
        ("journal:7740", HostPort("journal", 7740)),
        ("[::1]:0", HostPort("::1", 0)),
        ("0.0.0.0:65535", HostPort("0.0.0.0", 65535)),
    ],
)
def test_an_address_reads_and_formats_back_as_written(text: str, parsed: HostPort) -> None:
    assert parse_host_port(text, field="listen") == parsed
    assert str(parsed) == text


@pytest.mark.parametrize(
    "text",
    ["localhost", ":7740", "h:", "h:99999", "h:-1", "h:7e3", "::1:0", "[::1:0", "[]:1", "a b:1"],
)
def test_a_bad_address_is_refused_naming_the_field_and_the_value(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_host_port(text, field="journal.address")
    assert caught.value.field == "journal.address"
    assert repr(text) in caught.value.reason
    assert "HOST:PORT" in caught.value.reason


def test_port_zero_is_for_listeners_only() -> None:
    assert parse_host_port("h:0", field="listen").port == 0
    with pytest.raises(InvalidArgument, match="out of range"):
        parse_host_port("h:0", field="address", any_port=False)


def test_an_ipv6_host_is_formatted_in_brackets() -> None:
    assert format_host_port("::1", 7741) == "[::1]:7741"
    assert format_host_port("localhost", 7741) == "localhost:7741"
