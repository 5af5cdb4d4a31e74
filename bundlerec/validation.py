"""Checks for values that come from outside. Each raises InvalidArgument naming the field."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping, Sequence

from bundlerec.errors import InvalidArgument

MAX_ID_LENGTH = 256


# NUL breaks PostgreSQL text; other C0 controls (but tab, newline, carriage return) break logs.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


# An id goes into logs, keys, URLs and files: no control character at all (C0 with tab and line
# breaks, DEL, C1) and no Unicode line or paragraph separator.
_ID_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A valid id in one regex, for readers of millions of rows: none of those characters, not empty,
# no whitespace at either end.
_PLAIN_ID = re.compile(
    r"[^\s\x00-\x1f\x7f-\x9f\u2028\u2029](?:[^\x00-\x1f\x7f-\x9f\u2028\u2029]*[^\s\x00-\x1f\x7f-\x9f\u2028\u2029])?"
)


def _forbidden_char(value: str, forbidden: re.Pattern[str] = _FORBIDDEN) -> str | None:
    found = forbidden.search(value)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "NUL"
    kind = "line or paragraph separator" if char in "\u2028\u2029" else "control character"
    return f"{kind} U+{ord(char):04X}"


def is_identifier(value: str) -> bool:
    """What `identifier` accepts (required), in one regex: the fast path of bulk readers."""
    return len(value) <= MAX_ID_LENGTH and _PLAIN_ID.fullmatch(value) is not None


def text(field: str, value: str, *, max_length: int, required: bool = False) -> str:
    """Free text: bounded, no NUL or control characters (they break storage and logs)."""
    if required and not value:
        raise InvalidArgument(field, "is required")
    if len(value) > max_length:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most {max_length} allowed")
    bad = _forbidden_char(value)
    if bad:
        raise InvalidArgument(field, f"contains a {bad}")
    return value


def all_identifiers(values: list[str]) -> bool:
    """Whether `identifier` accepts every one of `values`, in a few C-speed passes over them all:
    the fast path of a request carrying hundreds of ids (the field is named only when one fails)."""
    if not values:
        return True
    if min(map(len, values)) == 0 or max(map(len, values)) > MAX_ID_LENGTH or list(map(str.strip, values)) != values:
        return False
    return _ID_FORBIDDEN.search("".join(values)) is None


def identifier(field: str, value: str, *, required: bool = True) -> str:
    """An id: 1 to 256 characters, no control character or line separator anywhere, not only
    whitespace, no whitespace at either end."""
    if required and not value.strip():
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most {MAX_ID_LENGTH} allowed")
    bad = _forbidden_char(value, _ID_FORBIDDEN)
    if bad:
        raise InvalidArgument(field, f"contains a {bad}")
    if value != value.strip():
        raise InvalidArgument(field, "must not start or end with whitespace")
    return value


def identifiers(field: str, values: Sequence[str], *, max_count: int, unique: bool = True) -> list[str]:
    if len(values) > max_count:
        raise InvalidArgument(field, f"has {len(values)} entries; at most {max_count} allowed")
    seen: set[str] = set()
    for i, value in enumerate(values):
        identifier(f"{field}[{i}]", value)
        if unique and value in seen:
            raise InvalidArgument(f"{field}[{i}]", f"repeats {value!r}")
        seen.add(value)
    return list(values)


def finite(field: str, value: float) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(field, f"must be a finite number, got {value}")
    return value


def string_map(
    field: str, values: Mapping[str, str], *, max_entries: int, max_key: int, max_value: int
) -> dict[str, str]:
    if len(values) > max_entries:
        raise InvalidArgument(field, f"has {len(values)} entries; at most {max_entries} allowed")
    for key, value in values.items():
        text(f"{field}[{key[:40]!r}]", key, max_length=max_key, required=True)
        text(f"{field}[{key[:40]!r}]", value, max_length=max_value)
    return dict(values)


def page_size(field: str, value: int, *, default: int, maximum: int) -> int:
    if value < 0:
        raise InvalidArgument(field, "must not be negative")
    if value > maximum:
        raise InvalidArgument(field, f"is {value}; at most {maximum} allowed")
    return value or default


def encode_page_token(kind: str, position: str | int) -> str:
    """An opaque token for the page after `position` of a listing of `kind` ("export", "items"...)."""
    return base64.urlsafe_b64encode(f"{kind}:{position}".encode()).decode()


def page_token(field: str, token: str, kind: str) -> str:
    """The position in a token encode_page_token made for `kind`; "" for no token (the first page).
    Anything else, a token of another listing included, is INVALID_ARGUMENT naming `field`."""
    if not token:
        return ""
    try:
        prefix, colon, position = base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeError, ValueError):
        prefix, colon, position = "", "", ""
    if prefix != kind or not colon or not position or _forbidden_char(position, _ID_FORBIDDEN):
        raise InvalidArgument(field, "is not a token this service issued")
    return position
