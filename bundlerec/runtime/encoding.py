"""Messages assembled from cached encodings of their parts (the protobuf wire format:
https://protobuf.dev/programming-guides/encoding/).

A request that carries the same sub-messages request after request (the catalogue's bundles, a
shopper's history) costs more to build field by field in Python than to send. The wire format
lets a message be the concatenation of its fields' encodings, and a repeated field's entries be
concatenated too; so each entry is encoded once, by protobuf itself, and kept, and a message is
the join of its scalar part and its cached entries. Parsers merge the pieces as if built whole.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from google.protobuf.message import Message

K = TypeVar("K", bound=Hashable)
_LEN = 2  # wire type of a length-delimited field (strings, bytes, messages)


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field_number: int, body: bytes) -> bytes:
    """A message (or string) field's whole encoding: its tag, its length, its bytes."""
    return varint(field_number << 3 | _LEN) + varint(len(body)) + body


class EncodedEntries(Generic[K]):
    """Entries of one repeated message field of `message_type`, encoded once per key by `build` and
    kept (emptied whole past `max_entries`: a catalogue's worth, bounded)."""

    def __init__(
        self, message_type: type[Message], field: str, build: Callable[[K], Message], max_entries: int = 100_000
    ) -> None:
        self.number = message_type.DESCRIPTOR.fields_by_name[field].number
        self.build = build
        self.max_entries = max_entries
        self._entries: dict[K, bytes] = {}

    def encode(self, keys: Iterable[K]) -> bytes:
        entries, out = self._entries, []
        for key in keys:
            entry = entries.get(key)
            if entry is None:
                if len(entries) >= self.max_entries:
                    entries.clear()
                entry = entries[key] = length_delimited(self.number, self.build(key).SerializeToString())
            out.append(entry)
        return b"".join(out)
