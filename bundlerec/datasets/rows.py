"""Streams the records of one CSV file with the physical line each starts on.

The csv module alone is not enough for an importer: opened as plain UTF-8 text, one stray
non-UTF-8 byte aborts the whole file with no line number, and `reader.line_num` is where a record
ends, not where it starts. So the file is decoded with `surrogateescape` (a bad byte becomes a lone
surrogate instead of an exception; the record holding it is reported and the rest still read), and
each record is reported with its first line. Decoding and splitting stay in C, which keeps a
multi-megabyte events file to about a second. The reader is strict RFC 4180 (`strict=True`):
text after a closing quote and an unterminated quote are errors, not guesses.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

# (line, values, problem, column): values when the record parsed, otherwise a problem and the
# index of the field at fault when it can be told. A plain tuple: one is built per row.
RawRecord = tuple[int, list[str] | None, str | None, int | None]

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def read_records(path: Path) -> Iterator[RawRecord]:
    """Every non-blank record of the file, header included, in order."""
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh, strict=True)
        end = 0
        first = True
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                start, end = end + 1, reader.line_num
                problem, column = _describe(str(exc), path, start, end)
                yield start, None, problem, column
                continue
            start, end = end + 1, reader.line_num
            if not values:
                continue  # a blank line
            if first:
                first = False
                if values[0].startswith("\ufeff"):
                    values[0] = values[0][1:]  # a byte-order mark, as spreadsheet exports write: tolerated
            joined = "".join(values)
            if not joined.isascii() and _ESCAPED_BYTE.search(joined):
                yield start, None, *_bad_utf8(values)
                continue
            yield start, values, None, None


def _bad_utf8(values: list[str]) -> tuple[str, int]:
    for column, value in enumerate(values):
        found = _ESCAPED_BYTE.search(value)
        if found is not None:
            byte = ord(found.group()) - 0xDC00
            return f"is not valid UTF-8 (byte 0x{byte:02X} at character {found.start() + 1})", column
    raise AssertionError("no escaped byte")  # pragma: no cover - the caller found one


def _describe(error: str, path: Path, start: int, end: int) -> tuple[str, int | None]:
    """A csv.Error message in the importer's words, with the column at fault when it can be told."""
    if "unexpected end of data" in error:
        message = f"unterminated quoted field: the quote opened on line {start} is never closed"
        if end > start:
            message += f" and swallows lines {start + 1}-{end}"
        return message, _open_quote(path, start)
    if "field larger than field limit" in error:
        message = f"a field is longer than {csv.field_size_limit()} characters (is a closing quote missing?)"
        if end > start:
            message += f"; lines {start + 1}-{end} were read into it and are lost"
        return message, _open_quote(path, start)
    if "NUL" in error:
        return "contains a NUL byte", None
    return f"malformed CSV ({error}); quote a field that contains commas, quotes or line breaks", None


def _open_quote(path: Path, line: int) -> int | None:
    """The index of the field whose quote never closes: the last field of its first line.

    Only read on this error path, so the fast path never keeps lines around."""
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        text = next(islice(fh, line - 1, None), "")
    fields = next(csv.reader([text]), [])
    return len(fields) - 1 if fields else None
