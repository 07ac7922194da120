"""ListOperations' filter and page tokens, hostile input included: a value or InvalidArgument.

Any text is a filter or an ``InvalidArgument`` naming ``filter``; any text a
page token (of a listing with this filter) or an ``InvalidArgument`` naming
``page_token``: never another error (which the service would send as
``UNKNOWN``). And tailrunner's own OperationsClient (which waits with
WaitOperation and pages with its own page size) works against the service.
"""

from __future__ import annotations

import base64
from uuid import UUID

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from tailrunner.errors import InvalidArgument
from tailrunner.operations.client import OperationsClient
from tailrunner.operations.listing import (
    Clause,
    Filter,
    ListKey,
    decode_page_token,
    encode_page_token,
    parse_filter,
)
from tests.operations.test_service import served_operations

_PIECES = st.sampled_from(
    [
        "state",
        "kind",
        "parent",
        "done",
        "=",
        " ",
        "AND",
        "and",
        "OR",
        '"',
        "\\",
        "RUNNING",
        "true",
        "operations/x",
        "\t",
        "==",
        "ping-registry",
        "'",
    ]
)
_FILTERS = st.one_of(st.text(max_size=60), st.lists(_PIECES, max_size=12).map("".join))


@settings(max_examples=400, deadline=None)
@given(_FILTERS)
def test_any_text_is_a_filter_or_invalid_argument_naming_filter(text: str) -> None:
    try:
        parsed = parse_filter(text)
    except InvalidArgument as exc:
        assert exc.field == "filter"
        assert len(str(exc)) < 600
    else:
        # The same clauses spelt again make the same fingerprint.
        again = " AND ".join(f"{c.field}={_quoted(c.value)}" for c in parsed.clauses)
        assert parse_filter(again).fingerprint == parsed.fingerprint


def _quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


_KEY = ListKey(1_700_000_000_000_000, UUID(int=7).bytes)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.binary(max_size=60).map(lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()),
    )
)
def test_any_text_is_a_page_token_or_invalid_argument_naming_page_token(token: str) -> None:
    try:
        decode_page_token(token, Filter(), "")
    except InvalidArgument as exc:
        assert exc.field == "page_token"
        assert len(str(exc)) < 600


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=44), st.integers(min_value=1, max_value=255))
def test_every_changed_byte_of_a_token_is_refused(position: int, flip: int) -> None:
    token = encode_page_token(_KEY, Filter())
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[position] ^= flip
    changed = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    try:
        decode_page_token(changed, Filter(), "")
    except InvalidArgument as exc:
        assert exc.field == "page_token"
    else:
        raise AssertionError(f"a token changed at byte {position} was accepted")


def test_a_token_decodes_to_its_key_with_its_filter_only() -> None:
    running = Filter((Clause("state", "RUNNING"),))
    token = encode_page_token(_KEY, running)
    assert decode_page_token(token, running, "state=RUNNING") == _KEY
    assert decode_page_token("", running, "state=RUNNING") is None
    for other in (Filter(), Filter((Clause("state", "FAILED"),))):
        try:
            decode_page_token(token, other, "…")
        except InvalidArgument as exc:
            assert "another filter" in exc.reason
        else:
            raise AssertionError("a token was accepted with another filter")
    # Another key (a server that does not share its key) refuses it.
    try:
        decode_page_token(token, running, "state=RUNNING", key=b"another")
    except InvalidArgument as exc:
        assert exc.field == "page_token"
    else:
        raise AssertionError("a token was accepted under another key")


def test_keys_order_by_create_time_then_id() -> None:
    assert ListKey(1, UUID(int=9).bytes) < ListKey(2, UUID(int=1).bytes)
    assert ListKey(1, UUID(int=1).bytes) < ListKey(1, UUID(int=2).bytes)


async def test_tailrunners_own_client_lists_waits_cancels_and_deletes() -> None:
    async with (
        served_operations() as served,
        OperationsClient.connect(served.server.address) as client,
    ):
        parent = await served.ops.create()
        children = [(await served.ops.create(parent=parent.name)).name for _ in range(3)]
        assert sorted(op.name for op in await client.children(parent.name)) == sorted(children)
        listed = [op.name async for op in client.list_operations(page_size=2)]
        assert sorted(listed) == sorted([parent.name, *children])

        async def finish() -> None:
            await served.watch.until_caught_up(1)
            await served.ops.set_successful(children[0])

        async with anyio.create_task_group() as group:
            group.start_soon(finish)
            assert (await client.wait(children[0], timeout=30)).done

        await client.cancel(children[1])
        assert await served.ops.cancel_requested(children[1])
        await client.delete(children[0])
        assert children[0] not in [op.name async for op in client.list_operations()]
