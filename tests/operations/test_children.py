"""Parent and child operations: pages of children with opaque tokens, and trees."""

from __future__ import annotations

import uuid
from collections import Counter
from contextlib import aclosing

import anyio
import pytest

from tailrunner.errors import InvalidArgument, InvalidPageToken, OperationNotFound
from tailrunner.journal.api import JournalApi
from tailrunner.journal.client import JournalClient
from tailrunner.model import AggregateRef, NewEvent
from tailrunner.operations import MAX_PAGE_SIZE, OperationNode, Operations
from tailrunner.operations.children import (
    CHILDREN_TYPE,
    AddChild,
    ChildrenBehaviour,
    encode_page_token,
)
from tailrunner.operations.names import children_index_id, parse_name
from tailrunner.proto.v1 import operations_pb2 as pb
from tailrunner.workflows.aggregates import Aggregates
from tests.operations.journals import WatchJournal


async def add_entry(journal: JournalApi, parent: str, child: str) -> None:
    """An index entry of ``child`` under ``parent``, as a create's first step leaves it."""
    index = Aggregates(journal, ChildrenBehaviour(), CHILDREN_TYPE)
    await index.tell(children_index_id(parse_name(parent)), AddChild(name=child))


async def names_of(ops: Operations, parent: str, page_size: int) -> list[str]:
    """Every child of ``parent``, read page by page."""
    names: list[str] = []
    token = ""
    while True:
        page, token = await ops.list_children(parent, page_size, token)
        names.extend(o.name for o in page)
        if not token:
            return names


async def test_a_child_names_its_parent_and_is_listed(ops: Operations) -> None:
    parent = (await ops.create("parent")).name
    child = (await ops.create("child", parent=parent)).name
    assert (await ops.get_state(child)).parent == parent
    page, token = await ops.list_children(parent)
    assert [o.name for o in page] == [child] and token == ""
    assert await ops.list_children(child) == ([], "")


async def test_a_child_of_a_missing_parent_is_refused_naming_the_parent(ops: Operations) -> None:
    with pytest.raises(OperationNotFound, match="operations/ghost"):
        await ops.create("orphan", parent="operations/ghost")
    with pytest.raises(OperationNotFound):
        await ops.get("operations/orphan")


async def test_children_come_in_pages_oldest_first(ops: Operations) -> None:
    parent = (await ops.create()).name
    children = [(await ops.create(f"c{i}", parent=parent)).name for i in range(5)]
    page, token = await ops.list_children(parent, 2)
    assert [o.name for o in page] == children[:2] and token
    page, token = await ops.list_children(parent, 2, token)
    assert [o.name for o in page] == children[2:4] and token
    page, token = await ops.list_children(parent, 2, token)
    assert [o.name for o in page] == children[4:] and token == ""
    assert await names_of(ops, parent, 0) == children


async def test_children_added_between_pages_are_neither_skipped_nor_repeated(
    ops: Operations,
) -> None:
    parent = (await ops.create()).name
    children = [(await ops.create(f"c{i}", parent=parent)).name for i in range(3)]
    listed: list[str] = []
    page, token = await ops.list_children(parent, 2)
    listed.extend(o.name for o in page)
    children += [(await ops.create(f"d{i}", parent=parent)).name for i in range(3)]
    while token:
        page, token = await ops.list_children(parent, 2, token)
        listed.extend(o.name for o in page)
        if len(children) < 8:
            children.append((await ops.create(f"e{len(children)}", parent=parent)).name)
    assert listed == children


async def test_a_deleted_child_is_not_listed(ops: Operations) -> None:
    parent = (await ops.create()).name
    kept = (await ops.create(parent=parent)).name
    gone = (await ops.create(parent=parent)).name
    await ops.set_successful(gone)
    await ops.delete(gone)
    assert await names_of(ops, parent, 1) == [kept]


async def test_an_index_entry_whose_child_is_not_its_own_is_skipped(
    ops: Operations, journal: WatchJournal
) -> None:
    """A create that failed after its index entry (another parent won the id) lists nothing."""
    first = (await ops.create("first")).name
    second = (await ops.create("second")).name
    await ops.create("shared", parent=first)
    # The index entry a losing create of "shared" under the second parent leaves.
    await add_entry(journal, second, "operations/shared")
    never = (await ops.create(parent=second)).name
    await add_entry(journal, second, "operations/nope")
    assert await names_of(ops, second, 1) == [never]
    assert await names_of(ops, first, 1) == ["operations/shared"]


async def test_a_retried_create_records_the_child_once(
    ops: Operations, client: JournalClient
) -> None:
    parent = (await ops.create()).name
    index = children_index_id(parse_name(parent))
    # A create interrupted after its index entry, then retried.
    await add_entry(client, parent, "operations/retried")
    await ops.create("retried", parent=parent)
    counts: Counter[str] = Counter()
    async with aclosing(client.events(index)) as batches:
        async for batch in batches:
            for event in batch.events:
                assert event.aggregate_type == CHILDREN_TYPE
                counts[pb.ChildAdded.FromString(event.data).name] += 1
    assert counts == Counter({"operations/retried": 1})
    assert await names_of(ops, parent, 0) == ["operations/retried"]


async def test_concurrent_children_of_one_parent_are_all_listed(ops: Operations) -> None:
    parent = (await ops.create()).name
    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            for i in range(10):
                group.start_soon(lambda i=i: ops.create(f"k{i}", parent=parent))
    assert sorted(await names_of(ops, parent, 3)) == sorted(f"operations/k{i}" for i in range(10))


async def test_a_bad_page_token_is_refused(ops: Operations) -> None:
    parent = (await ops.create()).name
    other = (await ops.create()).name
    for _ in range(3):
        await ops.create(parent=parent)
        await ops.create(parent=other)
    _, token = await ops.list_children(other, 1)
    bad_tokens = [
        "garbage!",
        "AAAA",
        token,  # another parent's
        encode_page_token(parse_name(parent), 99),  # past the end
    ]
    for bad in bad_tokens:
        with pytest.raises(InvalidPageToken) as info:
            await ops.list_children(parent, 1, bad)
        assert info.value.operation == parent and isinstance(info.value, InvalidArgument)


async def test_page_size_is_checked_and_capped(ops: Operations) -> None:
    parent = (await ops.create()).name
    with pytest.raises(InvalidArgument, match="page_size"):
        await ops.list_children(parent, -1)
    await ops.create(parent=parent)
    page, token = await ops.list_children(parent, MAX_PAGE_SIZE * 10)
    assert len(page) == 1 and token == ""


async def test_traverse_builds_the_tree_to_a_depth(ops: Operations) -> None:
    root = (await ops.create("root")).name
    a = (await ops.create("a", parent=root)).name
    b = (await ops.create("b", parent=root)).name
    a1 = (await ops.create("a1", parent=a)).name
    a1x = (await ops.create("a1x", parent=a1)).name

    full = OperationNode(
        root,
        (OperationNode(a, (OperationNode(a1, (OperationNode(a1x),)),)), OperationNode(b)),
    )
    assert await ops.traverse(root) == full
    assert await ops.traverse(root, max_depth=0) == OperationNode(root)
    assert await ops.traverse(root, max_depth=1) == OperationNode(
        root, (OperationNode(a), OperationNode(b))
    )
    assert await ops.traverse(root, max_depth=2) == OperationNode(
        root, (OperationNode(a, (OperationNode(a1),)), OperationNode(b))
    )
    assert await ops.traverse(a1x) == OperationNode(a1x)
    with pytest.raises(InvalidArgument, match="max_depth"):
        await ops.traverse(root, max_depth=-1)
    with pytest.raises(OperationNotFound):
        await ops.traverse("operations/none")


async def test_a_non_operation_aggregate_in_an_index_is_skipped(
    ops: Operations, client: JournalClient
) -> None:
    parent = (await ops.create()).name
    stranger = uuid.uuid4()
    await client.append(AggregateRef(type="ping-registry", id=stranger), [NewEvent(type="x")])
    await add_entry(client, parent, f"operations/{stranger}")
    assert await names_of(ops, parent, 0) == []
