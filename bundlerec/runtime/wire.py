"""Finds which field of a serialized protobuf message holds invalid UTF-8.

protobuf refuses such a message without saying where; callers deserve the field's name.
This walks the wire format (https://protobuf.dev/programming-guides/encoding/) with the
message's descriptor and returns a path such as `events[3].user_id`.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


class _Truncated(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Truncated
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def find_invalid_utf8(descriptor: Descriptor, data: bytes) -> str | None:
    """The path of the first string field that is not valid UTF-8, or None."""
    try:
        return _walk(descriptor, data)
    except _Truncated:
        return None


def _walk(descriptor: Descriptor, buf: bytes) -> str | None:
    pos = 0
    seen: dict[int, int] = {}
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _WIRE_VARINT:
            _, pos = _varint(buf, pos)
            continue
        if wire_type in (_WIRE_I64, _WIRE_I32):
            pos += 8 if wire_type == _WIRE_I64 else 4
            continue
        if wire_type != _WIRE_LEN:
            return None  # groups: not used by this API
        length, pos = _varint(buf, pos)
        chunk, pos = buf[pos : pos + length], pos + length
        field = descriptor.fields_by_number.get(number)
        if field is None:
            continue
        name = field.name
        if field.is_repeated:
            index = seen.get(number, 0)
            seen[number] = index + 1
            name = f"{name}[{index}]"
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError:
                return name
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            inner = _walk(field.message_type, chunk)
            if inner is not None:
                return f"{name}.{inner}"
    return None
