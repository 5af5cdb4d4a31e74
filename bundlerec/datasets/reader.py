"""Reads and validates a dataset directory in the import format (docs/import-format.md).

Every row is checked before anything is returned, because a catalogue import that half-succeeds
is worse than one that fails: with on_error="reject" (the default) any bad row raises DatasetError
listing what was found; with on_error="skip" bad rows are dropped and listed in Dataset.errors.
Problems with a file as a whole (missing items.csv, a bad header, an unreadable dataset.json) raise
in both modes: there are no good rows to keep.

Files are read in dependency order (items, bundles, bundle_info, events, valid, test) so that
every reference can be checked against what was already accepted. A bundle with a bad membership
row is dropped whole in skip mode: a bundle missing a member is a different bundle.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bundlerec import validation
from bundlerec.datasets.format import (
    ATTRIBUTE_SEPARATOR,
    COLUMNS,
    EVENT_TYPES,
    TARGET_TYPES,
    Bundle,
    DatasetError,
    DatasetInfo,
    Event,
    EventType,
    HeldOut,
    Item,
    RowError,
    TargetType,
    dataset_counts,
)
from bundlerec.datasets.rows import read_records
from bundlerec.errors import InvalidArgument

ProgressFn = Callable[[str, int], None]
OnError = Literal["reject", "skip"]

MAX_ERRORS = 50
PROGRESS_EVERY = 20_000
# Unix seconds past this (year 5138) are almost always milliseconds exported by mistake.
MAX_UNIX_SECONDS = 100_000_000_000

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_EVENT_TYPES: dict[str, EventType] = {t: t for t in EVENT_TYPES}
_TARGET_TYPES: dict[str, TargetType] = {t: t for t in TARGET_TYPES}


@dataclass(slots=True)
class Dataset:
    """A validated dataset. Items and bundles are keyed by id, in file order."""

    path: Path
    info: DatasetInfo
    items: dict[str, Item]
    bundles: dict[str, Bundle]
    events: list[Event]
    valid: list[HeldOut]
    test: list[HeldOut]
    errors: list[RowError] = field(default_factory=list)  # skip mode: the first MAX_ERRORS dropped rows
    error_count: int = 0  # skip mode: every dropped row, including those not listed in `errors`
    bundle_info_rows: int | None = None  # None when there is no bundle_info.csv

    def counts(self) -> dict[str, Any]:
        """The same figures as dataset.json "counts", computed from what was read."""
        return dataset_counts(
            items=len(self.items),
            bundles=self.bundles.values(),
            events=self.events,
            valid=self.valid,
            test=self.test,
            bundle_info_rows=self.bundle_info_rows,
        )


class _Bad(Exception):
    """A row-level problem; caught per row and turned into a RowError."""

    def __init__(self, column: str | None, message: str) -> None:
        super().__init__(message)
        self.column = column
        self.message = message


def read_dataset(
    path: str | Path,
    *,
    on_error: OnError = "reject",
    progress: ProgressFn | None = None,
    max_errors: int = MAX_ERRORS,
) -> Dataset:
    """Reads the dataset directory at `path`. `progress(file_name, rows_done)` is called every
    PROGRESS_EVERY rows and once at the end of each file, so a CLI can show where it is."""
    if on_error not in ("reject", "skip"):
        raise ValueError(f"on_error must be 'reject' or 'skip', got {on_error!r}")
    return _Reader(Path(path), on_error, progress, max_errors).read()


class _Reader:
    def __init__(self, root: Path, on_error: OnError, progress: ProgressFn | None, max_errors: int) -> None:
        self.root = root
        self.on_error = on_error
        self.progress = progress
        self.max_errors = max_errors
        self.errors: list[RowError] = []
        self.error_count = 0

    # -- errors ---------------------------------------------------------------------------------

    def _report(self, error: RowError) -> None:
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(error)

    def _fail(self, file: str, line: int, column: str | None, message: str) -> DatasetError:
        """A file-level problem: reported with everything found so far, in both modes."""
        self._report(RowError(file, line, column, message))
        return DatasetError(str(self.root), self.errors, self.error_count)

    # -- files ----------------------------------------------------------------------------------

    def read(self) -> Dataset:
        if not self.root.is_dir():
            raise self._fail(str(self.root), 0, None, "is not a directory")
        if not (self.root / "items.csv").is_file():
            raise self._fail("items.csv", 0, None, "is missing; it is the one file every dataset needs")
        info = self._info()
        items = self._items()
        members = self._bundles(info, items)
        titles, info_rows = self._bundle_titles(members)
        bundles = {b: Bundle(b, tuple(m), titles.get(b, "")) for b, m in members.items()}
        events = self._events(info, items, bundles)
        valid = self._held_out("valid.csv", info, items, bundles)
        test = self._held_out("test.csv", info, items, bundles)
        if self.error_count and self.on_error == "reject":
            raise DatasetError(str(self.root), self.errors, self.error_count)
        return Dataset(self.root, info, items, bundles, events, valid, test, self.errors, self.error_count, info_rows)

    def _info(self) -> DatasetInfo:
        default_task = "bundle" if (self.root / "bundles.csv").is_file() else "next_item"
        file = self.root / "dataset.json"
        if not file.is_file():
            return DatasetInfo(name=self.root.name, task=default_task)
        try:
            data = json.loads(file.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise self._fail("dataset.json", 0, None, f"is not valid UTF-8: {exc}") from None
        except json.JSONDecodeError as exc:
            raise self._fail("dataset.json", exc.lineno, None, f"is not valid JSON: {exc.msg}") from None
        try:
            return DatasetInfo.from_json(data, default_name=self.root.name, default_task=default_task)
        except ValueError as exc:
            raise self._fail("dataset.json", 0, None, str(exc)) from None

    def _rows(self, name: str) -> Iterator[tuple[int, list[str]]]:
        """(line, values in COLUMNS order) for every parsable row of the file with a full header;
        rows that do not parse or have the wrong width are reported here."""
        expected = COLUMNS[name]
        records = read_records(self.root / name)
        header = next(records, None)
        if header is None:
            raise self._fail(name, 1, None, f"is empty; a header row is required: {','.join(expected)}")
        header_line, columns, problem, _ = header
        if columns is None:
            raise self._fail(name, header_line, None, f"header row: {problem}")
        order = self._check_header(name, header_line, columns)
        reorder = order != list(range(len(expected)))
        width = len(columns)
        done = 0
        for line, values, problem, column in records:
            done += 1
            if self.progress is not None and done % PROGRESS_EVERY == 0:
                self.progress(name, done)
            if values is None:
                self._report(RowError(name, line, None if column is None else columns[column], problem or "unreadable"))
            elif len(values) != width:
                self._report(RowError(name, line, None, f"has {len(values)} fields; the header has {width}"))
            else:
                yield line, [values[i] for i in order] if reorder else values
        if self.progress is not None:
            self.progress(name, done)

    def _check_header(self, name: str, line: int, header: list[str]) -> list[int]:
        expected = COLUMNS[name]
        for column in header:
            if column not in expected:
                raise self._fail(name, line, column, f"unknown column {column!r}; expected {','.join(expected)}")
            if header.count(column) > 1:
                raise self._fail(name, line, column, "column appears twice in the header")
        for column in expected:
            if column not in header:
                raise self._fail(name, line, column, f"column missing from the header; expected {','.join(expected)}")
        return [header.index(column) for column in expected]

    def _items(self) -> dict[str, Item]:
        items: dict[str, Item] = {}
        first_line: dict[str, int] = {}
        for line, (item_id, title, category, brand, price, attributes) in self._rows("items.csv"):
            try:
                _id(item_id, "item_id")
                if item_id in items:
                    raise _Bad("item_id", f"duplicate item id {item_id!r}; first defined on line {first_line[item_id]}")
                cost = _number(price, "price") if price else None
                if cost is not None and cost < 0:
                    raise _Bad("price", f"must not be negative, got {price!r}")
            except _Bad as bad:
                self._report(RowError("items.csv", line, bad.column, bad.message))
                continue
            tokens = tuple(t for t in attributes.split(ATTRIBUTE_SEPARATOR) if t) if attributes else ()
            items[item_id] = Item(item_id, title, category, brand, cost, tokens)
            first_line[item_id] = line
        return items

    def _bundles(self, info: DatasetInfo, items: dict[str, Item]) -> dict[str, list[str]]:
        """Membership lists by bundle id; bundles with a bad row are left out."""
        if not (self.root / "bundles.csv").is_file():
            return {}
        members: dict[str, list[str]] = {}
        seen: set[tuple[str, str]] = set()
        broken: set[str] = set()
        check_items = "bundles.csv" not in info.allow_unknown_ids
        for line, (bundle_id, item_id) in self._rows("bundles.csv"):
            try:
                if bundle_id not in members:
                    _id(bundle_id, "bundle_id")
                if item_id not in items:  # an id in items.csv is valid already
                    broken.add(bundle_id)
                    _id(item_id, "item_id")
                    if check_items:
                        raise _Bad("item_id", f"unknown item {item_id!r} (not in items.csv)")
                    broken.discard(bundle_id)
                if (bundle_id, item_id) in seen:
                    raise _Bad("item_id", f"bundle {bundle_id!r} lists item {item_id!r} twice")
            except _Bad as bad:
                self._report(RowError("bundles.csv", line, bad.column, bad.message))
                continue
            seen.add((bundle_id, item_id))
            members.setdefault(bundle_id, []).append(item_id)
        return {b: m for b, m in members.items() if b not in broken}

    def _bundle_titles(self, members: dict[str, list[str]]) -> tuple[dict[str, str], int | None]:
        if not (self.root / "bundle_info.csv").is_file():
            return {}, None
        titles: dict[str, str] = {}
        for line, (bundle_id, title) in self._rows("bundle_info.csv"):
            try:
                _id(bundle_id, "bundle_id")
                if bundle_id not in members:
                    raise _Bad("bundle_id", f"unknown bundle {bundle_id!r} (not in bundles.csv, or left out there)")
                if bundle_id in titles:
                    raise _Bad("bundle_id", f"bundle {bundle_id!r} has a second row")
            except _Bad as bad:
                self._report(RowError("bundle_info.csv", line, bad.column, bad.message))
                continue
            titles[bundle_id] = title
        return titles, len(titles)

    def _events(self, info: DatasetInfo, items: dict[str, Item], bundles: dict[str, Bundle]) -> list[Event]:
        if not (self.root / "events.csv").is_file():
            return []
        events: list[Event] = []
        positions: dict[str, int] = {}  # per-user order, for datasets without timestamps
        kind = info.timestamps
        check_ids = "events.csv" not in info.allow_unknown_ids
        users: set[str] = set()  # ids already checked: most rows repeat a user seen before
        for line, (user_id, event_type, target_type, target_id, timestamp, value) in self._rows("events.csv"):
            try:
                if user_id not in users:
                    _id(user_id, "user_id")
                    users.add(user_id)
                etype = _EVENT_TYPES.get(event_type)
                if etype is None:
                    expected = ", ".join(EVENT_TYPES)
                    raise _Bad("event_type", f"unknown event type {event_type!r}; expected one of {expected}")
                ttype = _TARGET_TYPES.get(target_type)
                if ttype is None:
                    raise _Bad("target_type", f"unknown target type {target_type!r}; expected item or bundle")
                if target_id not in (items if ttype == "item" else bundles):  # known ids are valid ids
                    _id(target_id, "target_id")
                    if check_ids:
                        where = "items.csv" if ttype == "item" else "bundles.csv, or left out there"
                        raise _Bad("target_id", f"unknown {ttype} {target_id!r} (not in {where})")
                when = _timestamp(timestamp, kind)
                rating = _number(value, "value") if value else None
            except _Bad as bad:
                self._report(RowError("events.csv", line, bad.column, bad.message))
                continue
            if when is None:
                when = positions[user_id] = positions.get(user_id, 0) + 1
            events.append(Event(user_id, etype, ttype, target_id, when, rating))
        return events

    def _held_out(
        self, name: str, info: DatasetInfo, items: dict[str, Item], bundles: dict[str, Bundle]
    ) -> list[HeldOut]:
        if not (self.root / name).is_file():
            return []
        if info.declared:  # the task says what a target is
            kinds = "item" if info.task == "next_item" else "bundle"
            where = f"{kinds}s.csv; the task is {info.task}"
            known: Callable[[str], bool] = (items if info.task == "next_item" else bundles).__contains__
        else:
            kinds, where = "item or bundle", "items.csv or bundles.csv"
            known = lambda target: target in items or target in bundles  # noqa: E731
        check_ids = name not in info.allow_unknown_ids
        rows: list[HeldOut] = []
        seen: set[tuple[str, str]] = set()
        for line, (user_id, target_id) in self._rows(name):
            try:
                _id(user_id, "user_id")
                if not known(target_id):
                    _id(target_id, "target_id")
                    if check_ids:
                        raise _Bad("target_id", f"unknown {kinds} {target_id!r} (not in {where})")
                if (user_id, target_id) in seen:
                    raise _Bad("target_id", f"user {user_id!r} already has target {target_id!r} in this file")
            except _Bad as bad:
                self._report(RowError(name, line, bad.column, bad.message))
                continue
            seen.add((user_id, target_id))
            rows.append(HeldOut(user_id, target_id))
        return rows


def _id(value: str, column: str) -> None:
    """The API's rules for ids (bundlerec.validation), so every imported id can later be tracked,
    recommended and forgotten through the services."""
    if validation.is_identifier(value):
        return  # the common case, in one regex; the full check only names what is wrong
    try:
        validation.identifier(column, value)
    except InvalidArgument as error:
        raise _Bad(column, "is empty" if error.problem == "is required" else error.problem) from None


def _number(text: str, column: str) -> float:
    if _NUMBER.fullmatch(text) is None:
        if text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise _Bad(column, f"must be a finite number, got {text!r}")
        raise _Bad(column, f"is not a number: {text!r}")
    number = float(text)
    if not math.isfinite(number):
        raise _Bad(column, f"must be a finite number, got {text!r}")
    return number


def _timestamp(text: str, kind: str) -> int | None:
    """Unix seconds (fractions dropped: only order and gaps matter), an ordinal, or None for "none"."""
    if kind == "none":
        if text:
            _number(text, "timestamp")  # still must be well-formed; the position is used instead
        return None
    if not text:
        raise _Bad("timestamp", f"is empty (dataset.json says timestamps are {kind!r})")
    if text.isdigit():
        when = int(text)
    else:
        number = _number(text, "timestamp")
        if kind == "ordinal" and not number.is_integer():
            raise _Bad("timestamp", f"must be a whole number for ordinal timestamps, got {text!r}")
        when = math.floor(number)
    if when < 0:
        raise _Bad("timestamp", f"must not be negative, got {text!r}")
    if kind == "unix" and when > MAX_UNIX_SECONDS:
        raise _Bad("timestamp", f"{text!r} is too large for Unix seconds; milliseconds?")
    return when
