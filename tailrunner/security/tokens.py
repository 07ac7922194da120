"""``Tokens``: the bearer tokens a server accepts, each with its :class:`Role`.

A tokens file holds one token per line, after its role::

    # role   token
    read     3f9c…   # dashboards, tailrunner status, grpcurl list
    write    a71e…   # runners, writers, tailrunner task stop

``read`` may read everything (events, signals, lists, status, waits);
``write`` may also change things (append, control, cancel, delete). The file
must not be readable by other users (``chmod 600``): a server refuses it
otherwise, as ssh refuses a private key that others can read.

Only the tokens' SHA-256 digests are kept, so that a lookup costs the same
whatever a guess has in common with a real token, and no token sits in
memory longer than the file's reading.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from tailrunner.errors import InvalidArgument

#: Shortest token accepted: a guessable one protects nothing.
MIN_TOKEN_LENGTH = 16
#: A comment: from a '#' at the start of a line or after a space, to the end.
_COMMENT = re.compile(r"(?:^|\s)#.*$")


class Role(enum.Enum):
    """What a token may do; ``WRITE`` includes ``READ``."""

    READ = "read"
    WRITE = "write"

    def allows(self, needed: Role) -> bool:
        """Whether a token of this role may make a call that needs ``needed``."""
        return self is Role.WRITE or needed is Role.READ


def _digest(token: str | bytes) -> bytes:
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


class Tokens:
    """The tokens a server accepts. Build with :meth:`from_file` or from a mapping."""

    __slots__ = ("_roles",)

    def __init__(self, roles: Mapping[str, Role], *, field: str = "tokens") -> None:
        """:param roles: token → its role.
        :raises InvalidArgument: naming ``field``: no token, or a token too short
            or with spaces (the token itself is never quoted).
        """
        if not roles:
            raise InvalidArgument(field, "no token given (leave tokens unset for no auth)")
        digests: dict[bytes, Role] = {}
        for n, (token, role) in enumerate(roles.items(), start=1):
            _check_token(token, field=field, where="the token" if len(roles) == 1 else f"token {n}")
            digests[_digest(token)] = role
        self._roles = digests

    @classmethod
    def from_file(cls, path: Path, *, field: str = "tokens_file") -> Tokens:
        """Read a tokens file (see the module's documentation).

        :raises InvalidArgument: naming ``field`` and the file: unreadable,
            readable by other users, a line that is not ``ROLE TOKEN``, an
            unknown role, a repeated token, or no token at all.
        """
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(field, f"cannot read {path}: {_why(exc)}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InvalidArgument(
                field,
                f"{path} is open to other users (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}",
            )
        roles: dict[str, Role] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            # A comment starts a line or follows a space: a '#' inside a token is the token's.
            words = _COMMENT.sub("", line).split()
            if not words:
                continue
            where = f"{path} line {number}"
            if len(words) != 2:
                raise InvalidArgument(
                    field, f"{where}: expected ROLE TOKEN (read or write, a token)"
                )
            role_name, token = words
            try:
                role = Role(role_name.lower())
            except ValueError:
                # Not quoted: with the columns swapped, the first word is the token.
                raise InvalidArgument(
                    field, f"{where}: the first word must be the role, read or write"
                ) from None
            if token in roles:
                raise InvalidArgument(field, f"{where}: the token is given twice")
            _check_token(token, field=field, where=f"the token on {where}")
            roles[token] = role
        if not roles:
            raise InvalidArgument(field, f"{path} holds no token")
        return cls(roles, field=f"{field} ({path})")

    @classmethod
    def merged(cls, *parts: Tokens | None) -> Tokens | None:
        """All tokens of ``parts`` (a later part's role wins); ``None`` if none has any."""
        given = [part for part in parts if part is not None]
        if not given:
            return None
        merged = cls.__new__(cls)
        merged._roles = {}
        for part in given:
            merged._roles.update(part._roles)
        return merged

    def role_of(self, token: str | bytes) -> Role | None:
        """The role of ``token``, or ``None`` when it is not one of these."""
        wanted = _digest(token)
        found: Role | None = None
        # Digests compared in constant time, every one of them.
        for digest, role in self._roles.items():
            if hmac.compare_digest(digest, wanted):
                found = role
        return found

    def roles(self) -> Iterable[Role]:
        """The roles the tokens have (one per token), for logs."""
        return self._roles.values()

    def __repr__(self) -> str:
        # Never the tokens, not even their digests.
        return f"Tokens({len(self._roles)} tokens)"


def _check_token(token: str, *, field: str, where: str) -> None:
    if len(token) < MIN_TOKEN_LENGTH:
        raise InvalidArgument(field, f"{where} is shorter than {MIN_TOKEN_LENGTH} characters")
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise InvalidArgument(field, f"{where} has spaces or characters other than printable ASCII")


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return "not UTF-8 text"
