"""Store URLs: one syntax for the tail and journal stores, and one redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from tailrunner.errors import InvalidArgument
from tailrunner.stores import StoreUrl, parse_store_url, redact, store_options

ALLOWED = "memory:, sqlite:///PATH or postgresql://…"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:p%40ss@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
        (
            "postgresql://u@h/db?password=secret&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("postgresql://u:one@h/db?PASSWORD=two", "postgresql://u:***@h/db?PASSWORD=***"),
        ("mysql://me:secret@db/x", "mysql://me:***@db/x"),
        ("host=h password='a b' dbname=db", "host=h password=*** dbname=db"),
        ("postgres://h/db", "postgres://h/db"),
        ("sqlite:///tails.db", "sqlite:///tails.db"),
        ("memory:", "memory:"),
        ("http://[broken", "http://[broken"),
    ],
)
def test_redact_hides_userinfo_passwords_and_password_parameters(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("memory:", StoreUrl("memory", url="memory:")),
        ("memory://", StoreUrl("memory", url="memory://")),
        (
            "sqlite:///a%20b.db?synchronous=normal",
            StoreUrl(
                "sqlite",
                "a b.db",
                (("synchronous", "normal"),),
                "sqlite:///a%20b.db?synchronous=normal",
            ),
        ),
        (
            "sqlite:////var/lib/t.db",
            StoreUrl("sqlite", "/var/lib/t.db", (), "sqlite:////var/lib/t.db"),
        ),
        ("postgres://u@h/db", StoreUrl("postgresql", url="postgres://u@h/db")),
    ],
)
def test_a_store_url_reads_into_its_parts(url: str, parsed: StoreUrl) -> None:
    assert parse_store_url(url, field="tails.store", allowed=ALLOWED) == parsed


def test_a_store_url_writes_back_the_one_way_and_resolves_a_relative_file() -> None:
    relative = parse_store_url("sqlite:///state/t%3F.db?synchronous=FULL", field="f", allowed="")
    resolved = relative.resolved(Path("/conf"))
    assert str(resolved) == "sqlite:////conf/state/t%3F.db?synchronous=FULL"
    assert parse_store_url(str(resolved), field="f", allowed="") == StoreUrl(
        "sqlite", "/conf/state/t?.db", (("synchronous", "FULL"),), str(resolved)
    )
    assert str(parse_store_url("memory://", field="f", allowed="")) == "memory:"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://x", "'redis://x' is not a store URL"),
        ("sqlite://t.db", "is not a store URL"),
        ("sqlite:///", "names no file"),
        ("mysql://me:secret@db/x", "'mysql://me:***@db/x' is not a store URL"),
        ("postgresql://h/db", "is not a store URL"),  # this caller opens no PostgreSQL
    ],
)
def test_a_bad_store_url_is_refused_naming_the_field_and_what_is_allowed(
    url: str, words: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_store_url(url, field="--store", allowed=ALLOWED, schemes=("memory", "sqlite"))
    assert caught.value.field == "--store"
    assert words in caught.value.reason
    assert caught.value.reason.endswith(f"expected {ALLOWED}")
    assert "secret" not in caught.value.reason


def test_options_are_checked_against_what_the_store_takes() -> None:
    store = parse_store_url("sqlite:///j.db?synchronous=normal", field="f", allowed="")
    assert store_options(store, field="f", choices={"synchronous": ("FULL", "NORMAL")}) == {
        "synchronous": "NORMAL"
    }
    with pytest.raises(
        InvalidArgument, match=r"'synchronous' in 'sqlite:///j.db.*it takes no options"
    ):
        store_options(store, field="f", choices={})
    with pytest.raises(InvalidArgument, match=r"synchronous='normal' in .*: expected one of FULL$"):
        store_options(store, field="f", choices={"synchronous": ("FULL",)})
