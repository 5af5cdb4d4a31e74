"""Writes records back out in the import format, byte-for-byte reproducibly.

The demo generator uses it, and so can any export: same input, same bytes (LF line ends, fixed
column order, shortest exact numbers, JSON with a fixed key order), so that a generated dataset
can be checked in a test by comparing files.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bundlerec.datasets.format import ATTRIBUTE_SEPARATOR, COLUMNS, Bundle, Event, HeldOut, Item


def write_dataset(
    out_dir: str | Path,
    *,
    items: Iterable[Item],
    bundles: Iterable[Bundle] = (),
    events: Iterable[Event] = (),
    valid: Iterable[HeldOut] = (),
    test: Iterable[HeldOut] = (),
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Writes every file (bundle files only when there are bundles, dataset.json only with `info`)
    and returns the directory. Format files it does not write are removed, so a directory written
    twice never mixes two datasets."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write(
        out,
        "items.csv",
        (
            [i.item_id, i.title, i.category, i.brand, _num(i.price), ATTRIBUTE_SEPARATOR.join(i.attributes)]
            for i in items
        ),
    )
    bundle_list = list(bundles)
    if bundle_list:
        _write(out, "bundles.csv", ([b.bundle_id, item] for b in bundle_list for item in b.item_ids))
        _write(out, "bundle_info.csv", ([b.bundle_id, b.title] for b in bundle_list))
    else:
        (out / "bundles.csv").unlink(missing_ok=True)
        (out / "bundle_info.csv").unlink(missing_ok=True)
    _write(
        out,
        "events.csv",
        ([e.user_id, e.event_type, e.target_type, e.target_id, str(e.timestamp), _num(e.value)] for e in events),
    )
    _write(out, "valid.csv", ([h.user_id, h.target_id] for h in valid))
    _write(out, "test.csv", ([h.user_id, h.target_id] for h in test))
    if info is not None:
        text = json.dumps(info, indent=2, ensure_ascii=False) + "\n"
        (out / "dataset.json").write_text(text, encoding="utf-8", newline="\n")
    else:
        (out / "dataset.json").unlink(missing_ok=True)
    return out


def _write(out: Path, name: str, rows: Iterable[list[str]]) -> None:
    with (out / name).open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS[name])
        writer.writerows(rows)


def _num(value: float | None) -> str:
    """Empty for None; whole numbers without decimals (a 4-star rating is "4"); others as the shortest
    text that reads back as the same float (12.49, not 12.4900000001)."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
