"""AIP-158 pagination, one way for every List RPC of every service.

A List request carries ``page_size`` and ``page_token``; its response carries
``next_page_token``, empty on the last page. Pages are cut by key, not by
offset: a token holds the sort key of the last item it returned, so an item
created or deleted between two pages shifts nothing, and every item that
exists for the whole listing is returned exactly once.

A token is opaque to clients (URL-safe base64 of a small JSON object) and is
bound to the request's other fields: a token reused with different filters is
INVALID_ARGUMENT, as AIP-158 asks.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

from cnm import errors

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# A token is a few dozen bytes; anything longer was not made here.
MAX_TOKEN_LENGTH = 512

T = TypeVar("T")
Key = str | int


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


def page_size(requested: int) -> int:
    """The page size to use: the default for 0, the maximum for anything above it."""
    if requested < 0:
        raise errors.InvalidArgument(
            f"page_size must not be negative, got {requested}",
            reason="INVALID_PAGE_SIZE", field="page_size",
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def fingerprint(request: Message) -> str:
    """What a token is bound to: every field of the request but the paging ones."""
    query = type(request)()
    query.CopyFrom(request)
    query.ClearField("page_size")
    query.ClearField("page_token")
    return hashlib.sha256(query.SerializeToString(deterministic=True)).hexdigest()[:16]


def encode_token(after: Key, query: str) -> str:
    raw = json.dumps({"a": after, "q": query}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, query: str) -> Key:
    """The key a token continues after; INVALID_ARGUMENT for a token not made for this query."""
    try:
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = json.loads(raw)
        after, bound = decoded["a"], decoded["q"]
        if not isinstance(after, str | int) or isinstance(after, bool):
            raise TypeError("bad key")
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise errors.InvalidArgument(
            f"page_token {errors.capped(token)!r} is not a token this service gave out",
            reason="INVALID_PAGE_TOKEN", field="page_token",
        ) from None
    if bound != query:
        raise errors.InvalidArgument(
            "page_token was given out for a request with other filters; repeat the first "
            "request's fields, or start again without a token",
            reason="INVALID_PAGE_TOKEN", field="page_token",
        )
    return after


@dataclass(frozen=True)
class Cursor:
    """Where a List request starts: its page size, and the key it continues after."""

    size: int
    after: Key | None  # None for the first page
    query: str

    def next_token(self, last: Key) -> str:
        return encode_token(last, self.query)


def cursor(request: Message) -> Cursor:
    """The validated paging fields of a List request, for a store that pages itself."""
    query = fingerprint(request)
    after = decode_token(request.page_token, query) if request.page_token else None
    return Cursor(page_size(request.page_size), after, query)


def paginate(items: Sequence[T], request: Message, key: Callable[[T], Key]) -> Page[T]:
    """One page of ``items`` for ``request`` (a List request with page_size and page_token).

    ``items`` are every item the request's filters select; ``key`` gives each a
    unique sort key (a name, an id).
    """
    where = cursor(request)
    keyed = sorted(((key(item), item) for item in items), key=lambda pair: pair[0])
    keys = [item_key for item_key, _ in keyed]
    start = 0
    if where.after is not None:
        after = where.after
        try:
            start = bisect.bisect_right(keys, after)
        except TypeError:  # a key of another type than this listing's
            raise errors.InvalidArgument(
                "page_token does not belong to this listing",
                reason="INVALID_PAGE_TOKEN", field="page_token",
            ) from None
    end = start + where.size
    chosen = [item for _, item in keyed[start:end]]
    return Page(chosen, where.next_token(keys[end - 1]) if end < len(keyed) else "")


def _first_page(request: Message) -> Message:
    """A copy of ``request`` asking for the largest pages (fewest round trips)."""
    first = type(request).FromString(request.SerializeToString())
    first.page_size = first.page_size or MAX_PAGE_SIZE
    return first


def fetch_all(call: Callable[[Message], Message], request: Message, field: str) -> list:
    """Every item of a paged List RPC: ``call`` is a (synchronous) stub method,
    ``field`` the response's repeated field."""
    items: list = []
    request = _first_page(request)
    while True:
        response = call(request)
        items.extend(getattr(response, field))
        if not response.next_page_token:
            return items
        request.page_token = response.next_page_token


async def fetch_all_async(call, request: Message, field: str) -> list:
    """:func:`fetch_all` for an asyncio stub method."""
    items: list = []
    request = _first_page(request)
    while True:
        response = await call(request)
        items.extend(getattr(response, field))
        if not response.next_page_token:
            return items
        request.page_token = response.next_page_token
