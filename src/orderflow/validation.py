"""Input checks shared by the three services' domains (no framework imports).

Each check returns the value it accepted (stripped where that is the rule) or raises
InvalidArgumentError with a message naming the field, so every RPC refuses bad input
the same way and before it touches the database.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

from orderflow.errors import InvalidArgumentError

MAX_ID = 64
MAX_NAME = 200
MAX_LINES = 100
MAX_QUANTITY = 10_000
MAX_MONEY = 10**12
MAX_STOCK = 10**9
MAX_CURSOR = 512

_SKU = re.compile(r"[A-Za-z0-9._-]+")


def check_id(field: str, value: str, *, max_len: int = MAX_ID) -> str:
    """A non-empty identifier without surrounding blanks or control characters."""
    if not value:
        raise InvalidArgumentError(f"{field} is required", field=field)
    if len(value) > max_len:
        raise InvalidArgumentError(
            f"{field} is longer than {max_len} characters", field=field, max_length=max_len
        )
    if value != value.strip() or not value.isprintable():
        raise InvalidArgumentError(
            f"{field} must not contain blanks at its ends or control characters", field=field
        )
    return value


def check_sku(value: str, field: str = "sku") -> str:
    check_id(field, value)
    if not _SKU.fullmatch(value):
        raise InvalidArgumentError(
            f"{field} {value!r} may contain only letters, digits, '.', '_' and '-'", field=field
        )
    return value


def check_text(field: str, value: str, *, max_len: int = MAX_NAME) -> str:
    """Free text of 1..max_len characters, stripped."""
    stripped = value.strip()
    if not stripped:
        raise InvalidArgumentError(f"{field} is required", field=field)
    if len(stripped) > max_len:
        raise InvalidArgumentError(
            f"{field} is longer than {max_len} characters", field=field, max_length=max_len
        )
    if not stripped.isprintable():
        raise InvalidArgumentError(f"{field} must not contain control characters", field=field)
    return stripped


def check_range(field: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidArgumentError(
            f"{field} must be between {low} and {high}, got {value}",
            field=field,
            minimum=low,
            maximum=high,
        )
    return value


def check_money(field: str, value: int) -> int:
    return check_range(field, value, 0, MAX_MONEY)


def check_lines(lines: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Order lines as (sku, quantity): 1..100 of them, distinct skus, 1..10000 units each."""
    checked: list[tuple[str, int]] = []
    seen: set[str] = set()
    for index, (sku, quantity) in enumerate(lines):
        if index >= MAX_LINES:
            raise InvalidArgumentError(
                f"an order has at most {MAX_LINES} lines", field="lines", maximum=MAX_LINES
            )
        check_sku(sku, f"lines[{index}].sku")
        check_range(f"lines[{index}].quantity", quantity, 1, MAX_QUANTITY)
        if sku in seen:
            raise InvalidArgumentError(
                f"sku {sku!r} appears on more than one line; merge them", field="lines", sku=sku
            )
        seen.add(sku)
        checked.append((sku, quantity))
    if not checked:
        raise InvalidArgumentError("an order needs at least one line", field="lines")
    return checked


def check_limit(value: int, *, default: int, maximum: int = 100) -> int:
    if value == 0:
        return default
    return check_range("limit", value, 1, maximum)


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The position a cursor stands for; InvalidArgumentError if it was not made by us."""
    if len(cursor) > MAX_CURSOR:
        raise InvalidArgumentError("cursor is not valid", field="cursor")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgumentError("cursor is not valid", field="cursor") from None
    if not value or not value.isprintable():
        raise InvalidArgumentError("cursor is not valid", field="cursor")
    return value
