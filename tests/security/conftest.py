"""Certificates and tokens for the security tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .certs import Certs, make_certs

READ_TOKEN = "read-token-0123456789abcdef"
WRITE_TOKEN = "write-token-0123456789abcdef"
UNKNOWN_TOKEN = "unknown-token-0123456789abcdef"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# role token\nread {READ_TOKEN}\nwrite {WRITE_TOKEN}  # the runner\n")
    os.chmod(path, 0o600)
    return path
