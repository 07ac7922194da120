"""A server that other machines can reach needs TLS and tokens, or ``insecure = true``."""

from __future__ import annotations

import pytest

from tailrunner.address import HostPort
from tailrunner.errors import InvalidArgument
from tailrunner.journal.memory import MemoryJournalStore
from tailrunner.journal.server import JournalServer
from tailrunner.security import Role, ServerSecurity, ServerTls, Tokens, is_loopback

from .certs import Certs
from .conftest import WRITE_TOKEN

TOKENS = Tokens({WRITE_TOKEN: Role.WRITE})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("journal.example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("tls", "tokens", "missing"),
    [
        (False, False, "without TLS and without tokens"),
        (True, False, "without tokens"),
        (False, True, "without TLS"),
    ],
)
def test_an_open_bind_without_tls_or_tokens_is_refused_and_says_why(
    certs: Certs, tls: bool, tokens: bool, missing: str
) -> None:
    security = ServerSecurity(
        tls=ServerTls(cert=certs.server_cert, key=certs.server_key) if tls else None,
        tokens=TOKENS if tokens else None,
    )
    with pytest.raises(InvalidArgument) as refused:
        JournalServer(MemoryJournalStore(), listen="0.0.0.0:0", security=security)
    assert refused.value.field == "insecure"
    assert missing in str(refused.value)
    assert "0.0.0.0:0" in str(refused.value) and "insecure = true" in str(refused.value)


def test_insecure_or_both_let_an_open_bind_start(certs: Certs) -> None:
    ServerSecurity(insecure=True).check_bind(HostPort("0.0.0.0", 0), kind="journal")
    ServerSecurity(
        tls=ServerTls(cert=certs.server_cert, key=certs.server_key), tokens=TOKENS
    ).check_bind(HostPort("::", 0), kind="journal")


async def test_an_open_bind_with_insecure_really_serves() -> None:
    async with JournalServer(
        MemoryJournalStore(), listen="0.0.0.0:0", security=ServerSecurity(insecure=True)
    ) as server:
        assert server.port > 0
