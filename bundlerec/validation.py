"""Checks for values that come from outside. Each raises InvalidArgument naming the field."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from bundlerec.errors import InvalidArgument

MAX_ID_LENGTH = 256


# NUL breaks PostgreSQL text; other C0 controls (but tab, newline, carriage return) break logs.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _forbidden_char(value: str) -> str | None:
    found = _FORBIDDEN.search(value)
    if found is None:
        return None
    return "NUL" if found.group() == "\x00" else f"control character U+{ord(found.group()):04X}"


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


def identifier(field: str, value: str, *, required: bool = True) -> str:
    """An id: 1 to 256 characters, no control characters, not only whitespace."""
    if required and not value.strip():
        raise InvalidArgument(field, "is required")
    text(field, value, max_length=MAX_ID_LENGTH)
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
