"""Typed records for the import format (docs/import-format.md): one dataclass per kind of CSV row.

The records are frozen so that a loaded dataset can be shared between threads and indexes without
copies, and slotted because a real import holds hundreds of thousands of events. Nothing here reads
files: the reader (reader.py) turns rows into these records, and the demo generator writes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bundlerec.errors import InvalidArgument

EventType = Literal["view", "click", "add_to_cart", "purchase", "rating", "like"]
TargetType = Literal["item", "bundle"]
Task = Literal["bundle", "next_item"]
TimestampKind = Literal["unix", "ordinal", "none"]

EVENT_TYPES: tuple[EventType, ...] = ("view", "click", "add_to_cart", "purchase", "rating", "like")
TARGET_TYPES: tuple[TargetType, ...] = ("item", "bundle")
TASKS: tuple[Task, ...] = ("bundle", "next_item")
TIMESTAMP_KINDS: tuple[TimestampKind, ...] = ("unix", "ordinal", "none")

# The files whose ids must resolve to items.csv / bundles.csv unless dataset.json lists them in
# "allow_unknown_ids".
REFERENCING_FILES = ("bundles.csv", "events.csv", "valid.csv", "test.csv")

CATEGORY_SEPARATOR = " > "
ATTRIBUTE_SEPARATOR = "|"

# The header each file must have (any column order). items.csv is the only file that must exist.
COLUMNS: dict[str, tuple[str, ...]] = {
    "items.csv": ("item_id", "title", "category", "brand", "price", "attributes"),
    "bundles.csv": ("bundle_id", "item_id"),
    "bundle_info.csv": ("bundle_id", "title"),
    "events.csv": ("user_id", "event_type", "target_type", "target_id", "timestamp", "value"),
    "valid.csv": ("user_id", "target_id"),
    "test.csv": ("user_id", "target_id"),
}


@dataclass(frozen=True, slots=True)
class Item:
    """A catalogue entry. Empty strings mean "not known", never "not applicable"."""

    item_id: str
    title: str = ""
    category: str = ""
    brand: str = ""
    price: float | None = None
    attributes: tuple[str, ...] = ()

    @property
    def category_path(self) -> tuple[str, ...]:
        """The category as its levels, broadest first: ('Electronics', 'Phones', 'Cases')."""
        return tuple(self.category.split(CATEGORY_SEPARATOR)) if self.category else ()


@dataclass(frozen=True, slots=True)
class BundleMembership:
    """One row of bundles.csv. A bundle is the set of its membership rows."""

    bundle_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class Bundle:
    """A set of items sold together; `item_ids` keeps the file's order, `title` is its name or intent."""

    bundle_id: str
    item_ids: tuple[str, ...]
    title: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    """One behaviour event. `timestamp` is Unix seconds (fractions dropped) or, for datasets whose
    dataset.json says "ordinal" or "none", a position: only the order within one user means anything."""

    user_id: str
    event_type: EventType
    target_type: TargetType
    target_id: str
    timestamp: int
    value: float | None = None


@dataclass(frozen=True, slots=True)
class HeldOut:
    """One held-out positive (valid.csv / test.csv): an item or a bundle, as the task says."""

    user_id: str
    target_id: str


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem, pointing at the physical line where the offending record starts (1 = header).

    `field` is the column name, or None when the problem is the row as a whole (wrong field count,
    broken quoting) or the file itself."""

    file: str
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class DatasetError(InvalidArgument):
    """The dataset cannot be imported as it is. Carries the first `errors` found and the `total`.

    The list is capped so that a file with a million bad rows cannot exhaust memory or a terminal;
    `total` still counts every one. An InvalidArgument, so that an import over gRPC fails with
    INVALID_ARGUMENT naming the first bad place (`items.csv:6:price`) as the field."""

    reason = "INVALID_DATASET"

    def __init__(self, path: str, errors: list[RowError], total: int) -> None:
        first = errors[0] if errors else RowError(path, 0, None, "invalid")
        where = ":".join(str(part) for part in (first.file, first.line or None, first.field) if part)
        super().__init__(where, first.message if total == 1 else f"{first.message} (and {total - 1} more)")
        shown = "\n".join(f"  {e}" for e in errors[:10])
        more = f"\n  ... and {total - min(len(errors), 10)} more" if total > min(len(errors), 10) else ""
        self.message = f"{total} error(s) in dataset {path}:\n{shown}{more}"
        self.args = (self.message,)
        self.path = path
        self.errors = errors
        self.total = total


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """What dataset.json says. Every key is optional so that a bare catalogue export still imports.

    `allow_unknown_ids` names the files (e.g. "events.csv") whose ids need not resolve to items.csv
    or bundles.csv: FORMAT.md allows that "where dataset.json says otherwise", and this is how it
    says it. None of the shared research datasets needs it."""

    name: str
    task: Task
    timestamps: TimestampKind = "unix"
    counts: Mapping[str, Any] = field(default_factory=dict)
    reference_results: tuple[Mapping[str, Any], ...] = ()
    protocol: str = ""
    licence: str = ""
    source: str = ""
    notes: tuple[str, ...] = ()
    allow_unknown_ids: frozenset[str] = frozenset()
    declared: bool = False  # True when read from a dataset.json; False when inferred

    @classmethod
    def from_json(cls, data: Any, *, default_name: str, default_task: Task) -> DatasetInfo:
        """Builds the record from parsed JSON; raises ValueError naming the first bad key."""
        if not isinstance(data, dict):
            raise ValueError("top level must be a JSON object")
        name = _str(data, "name", default_name)
        task = _str(data, "task", default_task)
        if task not in TASKS:
            raise ValueError(f"task: must be one of {', '.join(TASKS)}, got {task!r}")
        timestamps = _str(data, "timestamps", "unix")
        if timestamps not in TIMESTAMP_KINDS:
            raise ValueError(f"timestamps: must be one of {', '.join(TIMESTAMP_KINDS)}, got {timestamps!r}")
        counts = data.get("counts", {})
        if not isinstance(counts, dict):
            raise ValueError("counts: must be an object")
        results = data.get("reference_results", [])
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise ValueError("reference_results: must be a list of objects")
        notes = data.get("notes", [])
        if isinstance(notes, str):
            notes = [notes]
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ValueError("notes: must be a list of strings")
        unknown = data.get("allow_unknown_ids", [])
        if not isinstance(unknown, list) or not set(unknown) <= set(REFERENCING_FILES):
            raise ValueError("allow_unknown_ids: must be a list of file names such as 'events.csv'")
        return cls(
            name=name,
            task=task,  # type: ignore[arg-type]  # checked against TASKS above
            timestamps=timestamps,  # type: ignore[arg-type]
            counts=counts,
            reference_results=tuple(results),
            protocol=_str(data, "protocol", ""),
            licence=_str(data, "licence", ""),
            source=_str(data, "source", ""),
            notes=tuple(notes),
            allow_unknown_ids=frozenset(unknown),
            declared=True,
        )


def _str(data: dict[str, Any], key: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key}: must be a string")
    return value


def dataset_counts(
    *,
    items: int,
    bundles: Iterable[Bundle],
    events: Iterable[Event],
    valid: Iterable[HeldOut],
    test: Iterable[HeldOut],
    bundle_info_rows: int | None = None,
) -> dict[str, Any]:
    """The "counts" block of dataset.json, computed the same way for a dataset read and one generated.

    `users` counts everyone in events, valid or test (a user may have held-out rows and no history);
    `events_by_type` is keyed "event_type/target_type". `bundle_info_rows` appears only when the
    dataset has a bundle_info.csv."""
    bundle_list = list(bundles)
    by_type: Counter[str] = Counter()
    event_users: set[str] = set()
    n_events = 0
    for event in events:
        n_events += 1
        by_type[f"{event.event_type}/{event.target_type}"] += 1
        event_users.add(event.user_id)
    valid_list, test_list = list(valid), list(test)
    valid_users = {h.user_id for h in valid_list}
    test_users = {h.user_id for h in test_list}
    counts: dict[str, Any] = {
        "users": len(event_users | valid_users | test_users),
        "items": items,
        "bundles": len(bundle_list),
        "bundle_item_rows": sum(len(b.item_ids) for b in bundle_list),
        "events": n_events,
        "events_by_type": dict(sorted(by_type.items())),
        "event_users": len(event_users),
        "valid": len(valid_list),
        "valid_users": len(valid_users),
        "test": len(test_list),
        "test_users": len(test_users),
    }
    if bundle_info_rows is not None:
        counts["bundle_info_rows"] = bundle_info_rows
    return counts
