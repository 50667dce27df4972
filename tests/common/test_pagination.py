"""cnm.pagination on real request messages (no server): sizes, tokens, keyset order."""

from __future__ import annotations

import pytest

from cnm import errors, pagination
from cnm.orchestrator.v1 import orchestrator_pb2 as pb


def names(count: int) -> list[str]:
    return [f"n{i:04d}" for i in range(count)]


def walk(items, request, key=lambda item: item):
    """Every page for ``request``, as lists."""
    pages = []
    while True:
        page = pagination.paginate(items, request, key)
        pages.append(page.items)
        if not page.next_page_token:
            return pages
        request.page_token = page.next_page_token


def test_pages_cover_every_item_once_in_key_order():
    items = names(7)[::-1]
    pages = walk(items, pb.ListNetworksRequest(page_size=3))
    assert pages == [["n0000", "n0001", "n0002"], ["n0003", "n0004", "n0005"], ["n0006"]]


def test_exact_multiple_ends_without_an_empty_page():
    assert walk(names(4), pb.ListNetworksRequest(page_size=2)) == [names(4)[:2], names(4)[2:]]
    assert walk([], pb.ListNetworksRequest()) == [[]]


def test_default_and_maximum_sizes():
    items = names(2500)
    assert len(pagination.paginate(items, pb.ListNetworksRequest(), str).items) == 100
    assert len(pagination.paginate(items, pb.ListNetworksRequest(page_size=10**6), str).items) \
        == pagination.MAX_PAGE_SIZE


def test_items_created_or_deleted_between_pages_shift_nothing():
    items = names(6)
    request = pb.ListNetworksRequest(page_size=3)
    first = pagination.paginate(items, request, str)
    assert first.items == names(3)
    # n0001 (already returned) goes, n0000a (before the cut) and n0009 (after) come.
    changed = [n for n in items if n != "n0001"] + ["n0000a", "n0009"]
    request.page_token = first.next_page_token
    assert pagination.paginate(changed, request, str).items == ["n0003", "n0004", "n0005"]


def test_integer_keys_order_numerically():
    addresses = [10, 9, 100, 1]
    assert walk(addresses, pb.ListNetworksRequest(page_size=2), int) == [[1, 9], [10, 100]]


@pytest.mark.parametrize("token", ["garbage!", "e30", "x" * 600, "\x00\x1b[2J",
                                   "eyJhIjp0cnVlLCJxIjoiIn0"])  # {"a":true,"q":""}
def test_a_token_not_made_here_is_invalid_argument(token):
    with pytest.raises(errors.InvalidArgument) as caught:
        pagination.paginate(names(3), pb.ListNetworksRequest(page_token=token), str)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    assert len(caught.value.message) < 200


def test_a_token_reused_with_other_filters_is_refused():
    first = pagination.paginate(names(5), pb.ListNetworksRequest(driver=pb.DRIVER_BRIDGE, page_size=2), str)
    for other in (pb.ListNetworksRequest(driver=pb.DRIVER_OVERLAY),
                  pb.ListNetworksRequest(driver=pb.DRIVER_BRIDGE, label_filters=["a"])):
        other.page_token = first.next_page_token
        with pytest.raises(errors.InvalidArgument, match="other filters"):
            pagination.paginate(names(5), other, str)
    # The page size may change between pages.
    same = pb.ListNetworksRequest(driver=pb.DRIVER_BRIDGE, page_size=3, page_token=first.next_page_token)
    assert pagination.paginate(names(5), same, str).items == ["n0002", "n0003", "n0004"]


def test_a_token_of_another_key_type_is_refused():
    token = pagination.paginate(names(5), pb.ListNetworksRequest(page_size=2), str)
    request = pb.ListNetworksRequest(page_size=2, page_token=token.next_page_token)
    with pytest.raises(errors.InvalidArgument, match="does not belong"):
        pagination.paginate([1, 2, 3], request, int)


def test_negative_page_size_is_invalid_argument():
    with pytest.raises(errors.InvalidArgument) as caught:
        pagination.paginate(names(3), pb.ListNetworksRequest(page_size=-1), str)
    assert caught.value.reason == "INVALID_PAGE_SIZE"


def test_fetch_all_follows_every_token_with_the_largest_pages():
    items = names(2345)
    sizes = []

    def call(request):
        sizes.append(request.page_size)
        page = pagination.paginate(items, request, str)
        return pb.ListNetworksResponse(networks=[pb.Network(name=n) for n in page.items],
                                       next_page_token=page.next_page_token)

    fetched = pagination.fetch_all(call, pb.ListNetworksRequest(), "networks")
    assert [n.name for n in fetched] == items
    assert sizes == [pagination.MAX_PAGE_SIZE] * 3
