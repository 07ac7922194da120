"""The tokens file: roles, refusals that name the line but never the token."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tailrunner.errors import InvalidArgument
from tailrunner.security import Role, Tokens

from .conftest import READ_TOKEN, UNKNOWN_TOKEN, WRITE_TOKEN


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_each_token_has_its_role_and_write_includes_read(tokens_file: Path) -> None:
    tokens = Tokens.from_file(tokens_file)
    assert tokens.role_of(READ_TOKEN) is Role.READ
    assert tokens.role_of(WRITE_TOKEN) is Role.WRITE
    assert tokens.role_of(UNKNOWN_TOKEN) is None
    assert tokens.role_of(READ_TOKEN[:-1]) is None
    assert Role.WRITE.allows(Role.READ) and Role.WRITE.allows(Role.WRITE)
    assert Role.READ.allows(Role.READ) and not Role.READ.allows(Role.WRITE)
    assert READ_TOKEN not in repr(tokens) and WRITE_TOKEN not in repr(tokens)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (f"admin {READ_TOKEN}\n", "line 1: the first word must be the role, read or write"),
        (f"{READ_TOKEN} read\n", "line 1: the first word must be the role"),
        ("read\n", "line 1: expected ROLE TOKEN"),
        (f"# c\nread {READ_TOKEN} extra\n", "line 2: expected ROLE TOKEN"),
        (f"read {READ_TOKEN}\nwrite {READ_TOKEN}\n", "line 2: the token is given twice"),
        ("read short\n", "shorter than 16 characters"),
        ("# nothing\n\n", "holds no token"),
    ],
)
def test_a_bad_file_is_refused_by_line_without_quoting_a_token(
    tmp_path: Path, text: str, words: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        Tokens.from_file(write(tmp_path, text))
    assert words in str(refused.value)
    assert READ_TOKEN not in str(refused.value)


def test_a_hash_inside_a_token_is_the_tokens_and_after_a_space_a_comment(tmp_path: Path) -> None:
    hashed = "abcdefghijklmnop#qrstuvwxyz"
    tokens = Tokens.from_file(write(tmp_path, f"# comment\nread {hashed} # the dashboard\n"))
    assert tokens.role_of(hashed) is Role.READ
    assert tokens.role_of("abcdefghijklmnop") is None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    with pytest.raises(InvalidArgument) as refused:
        Tokens.from_file(write(tmp_path, f"read {READ_TOKEN}\n", mode))
    assert f"mode {mode:04o}" in str(refused.value) and "chmod 600" in str(refused.value)


def test_a_missing_or_binary_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"cannot read .*nope"):
        Tokens.from_file(tmp_path / "nope")
    path = tmp_path / "bin"
    path.write_bytes(b"\xff\xfe\x00read")
    os.chmod(path, 0o600)
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        Tokens.from_file(path)


def test_merged_tokens_keep_every_role() -> None:
    merged = Tokens.merged(Tokens({READ_TOKEN: Role.READ}), None, Tokens({WRITE_TOKEN: Role.WRITE}))
    assert merged is not None
    assert merged.role_of(READ_TOKEN) is Role.READ and merged.role_of(WRITE_TOKEN) is Role.WRITE
    assert Tokens.merged(None, None) is None
