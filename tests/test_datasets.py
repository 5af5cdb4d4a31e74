"""The dataset reader against the real shared datasets and against broken files; the demo generator.

Broken inputs are small files written to tmp dirs, each with one defect, so that every test can
say exactly which file, physical line and column must be blamed, and what skip mode keeps.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

from bundlerec.datasets import Dataset, DatasetError, RowError, read_dataset
from bundlerec.datasets.demo import generate_demo_shop

SHARED_DATA = Path("/work/shared/data")


def _shared_datasets() -> list[object]:
    if not SHARED_DATA.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{SHARED_DATA} is absent"))]
    return [pytest.param(p, id=p.name) for p in sorted(SHARED_DATA.iterdir()) if (p / "items.csv").is_file()]


@pytest.mark.slow
@pytest.mark.parametrize("path", _shared_datasets())
def test_shared_dataset_reads_cleanly_and_matches_its_counts(path: Path) -> None:
    started = time.perf_counter()
    dataset = read_dataset(path, on_error="reject")
    elapsed = time.perf_counter() - started
    assert dataset.errors == [] and dataset.error_count == 0
    expected = dict(dataset.info.counts)
    counts = dataset.counts()
    if set(expected) != set(counts):
        pytest.skip(f"dataset.json counts keys differ: {sorted(set(expected) ^ set(counts))}")
    assert counts == expected
    assert elapsed < 15, f"reading {path.name} took {elapsed:.1f} s"


# -- a tiny valid dataset, and one defect at a time -----------------------------------------------

# i2's title spans two physical lines, so that every later row's line number tests physical counting.
ITEMS = (
    "item_id,title,category,brand,price,attributes\n"
    "i1,Trail Boots,Outdoor > Hiking > Boots,Northpeak,89.99,colour:brown|waterproof\n"
    'i2,"Rain Jacket,\npackable",Outdoor > Hiking > Rain Jackets,Northpeak,120,\n'
    "i3,Headlamp,,,,\n"
    "i4,Trekking Poles,Outdoor > Hiking > Poles,Alpenwerk,45.5,\n"
)
BASE = {
    "dataset.json": json.dumps({"name": "tiny", "task": "next_item", "timestamps": "unix"}),
    "items.csv": ITEMS,
    "bundles.csv": "bundle_id,item_id\nb1,i1\nb1,i2\n",
    "bundle_info.csv": "bundle_id,title\nb1,Ready for the trail\n",
    "events.csv": (
        "user_id,event_type,target_type,target_id,timestamp,value\n"
        "u1,view,item,i1,1700000000,\n"
        "u1,purchase,bundle,b1,1700000100,\n"
        "u2,rating,item,i3,1700000200.75,4\n"
    ),
    "valid.csv": "user_id,target_id\nu1,i3\n",
    "test.csv": "user_id,target_id\nu1,i2\n",
}


def _write(root: Path, **files: str | bytes) -> Path:
    """BASE with some files replaced (a str or bytes) or removed (b""); items_csv names items.csv."""
    root.mkdir(parents=True, exist_ok=True)
    merged: dict[str, str | bytes] = dict(BASE)
    for key, content in files.items():
        merged[key.replace("_csv", ".csv").replace("_json", ".json")] = content
    for name, content in merged.items():
        if content == b"":
            continue
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


def _where(error: RowError) -> tuple[str, int, str | None]:
    return error.file, error.line, error.field


def test_the_base_dataset_is_valid(tmp_path: Path) -> None:
    dataset = read_dataset(_write(tmp_path))
    assert list(dataset.items) == ["i1", "i2", "i3", "i4"]
    assert dataset.items["i2"].title == "Rain Jacket,\npackable"
    assert dataset.items["i1"].attributes == ("colour:brown", "waterproof")
    assert dataset.items["i1"].category_path == ("Outdoor", "Hiking", "Boots")
    assert dataset.items["i3"].price is None and dataset.items["i2"].price == 120.0
    assert dataset.bundles["b1"].item_ids == ("i1", "i2") and dataset.bundles["b1"].title == "Ready for the trail"
    assert [e.timestamp for e in dataset.events] == [1700000000, 1700000100, 1700000200]  # fractions dropped
    assert dataset.events[2].value == 4.0
    assert dataset.counts()["events_by_type"] == {"purchase/bundle": 1, "rating/item": 1, "view/item": 1}


BROKEN = {
    "bad header": (
        {"events_csv": "user_id,event_type,target_type,target,timestamp,value\nu1,view,item,i1,1,\n"},
        ("events.csv", 1, "target"),
    ),
    "unknown event type": (
        {"events_csv": BASE["events.csv"] + "u3,bought,item,i1,1700000300,\n"},
        ("events.csv", 5, "event_type"),
    ),
    "event on a missing item": (
        {"events_csv": BASE["events.csv"] + "u3,view,item,i99,1700000300,\n"},
        ("events.csv", 5, "target_id"),
    ),
    "NaN price": (
        {"items_csv": ITEMS.replace("Alpenwerk,45.5", "Alpenwerk,NaN")},
        ("items.csv", 6, "price"),
    ),
    "unterminated quote": (
        {"items_csv": ITEMS.replace("i4,Trekking Poles", 'i4,"Trekking Poles')},
        ("items.csv", 6, "title"),
    ),
    "non-UTF-8 bytes": (
        {"items_csv": ITEMS.encode().replace(b"Trekking Poles", b"Trekking \xff Poles")},
        ("items.csv", 6, "title"),
    ),
    "duplicate item id": (
        {"items_csv": ITEMS + "i1,Another boot,,,,\n"},
        ("items.csv", 7, "item_id"),
    ),
    "wrong number of fields": (
        {"valid_csv": "user_id,target_id\nu1,i3,extra\n"},
        ("valid.csv", 2, None),
    ),
    "text after a closing quote": (
        {"items_csv": ITEMS.replace("i4,Trekking Poles", 'i4,"Trekking" Poles')},
        ("items.csv", 6, None),
    ),
    "repeated bundle member": (
        {"bundles_csv": "bundle_id,item_id\nb1,i1\nb1,i2\nb1,i1\n"},
        ("bundles.csv", 4, "item_id"),
    ),
    "control character in an id": (
        {"valid_csv": "user_id,target_id\nu\x071,i3\n"},
        ("valid.csv", 2, "user_id"),
    ),
    # what the API refuses in an id, the import refuses too: an imported user must stay forgettable
    "line separator in an id": (
        {"valid_csv": "user_id,target_id\nu1\u2028x,i3\n"},
        ("valid.csv", 2, "user_id"),
    ),
    "millisecond timestamp": (
        {"events_csv": BASE["events.csv"] + "u3,view,item,i1,1700000300000,\n"},
        ("events.csv", 5, "timestamp"),
    ),
    "held-out bundle in a next_item dataset": (
        {"test_csv": "user_id,target_id\nu1,b1\n"},
        ("test.csv", 2, "target_id"),
    ),
}


@pytest.mark.parametrize(("files", "where"), BROKEN.values(), ids=BROKEN.keys())
def test_reject_names_file_line_and_field_and_returns_nothing(
    tmp_path: Path, files: dict[str, str | bytes], where: tuple[str, int, str | None]
) -> None:
    root = _write(tmp_path, **files)
    with pytest.raises(DatasetError) as caught:
        read_dataset(root, on_error="reject")
    assert _where(caught.value.errors[0]) == where
    assert caught.value.total == 1, caught.value.errors
    assert f"{where[0]}:{where[1]}" in str(caught.value)


@pytest.mark.parametrize(("files", "where"), BROKEN.values(), ids=BROKEN.keys())
def test_skip_drops_the_bad_row_and_keeps_the_good_ones(
    tmp_path: Path, files: dict[str, str | bytes], where: tuple[str, int, str | None]
) -> None:
    root = _write(tmp_path, **files)
    if where[1] == 1:  # a header problem leaves no rows to keep: it raises in skip mode too
        with pytest.raises(DatasetError):
            read_dataset(root, on_error="skip")
        return
    dataset = read_dataset(root, on_error="skip")
    assert [_where(e) for e in dataset.errors] == [where] and dataset.error_count == 1
    good = read_dataset(_write(tmp_path / "good"))
    file = where[0]
    if file == "items.csv":
        dropped = {"i4"} if where[1] == 6 else set()  # line 6 is i4's row; a duplicate comes after it
        assert set(dataset.items) == set(good.items) - dropped
        assert dataset.items["i1"].title == "Trail Boots"  # a duplicate does not replace the first row
        assert dataset.events == good.events
    elif file == "events.csv":
        assert dataset.events == good.events
    elif file == "bundles.csv":
        assert dataset.bundles == good.bundles  # the repeated row is dropped, the bundle intact
    else:
        rows = dataset.valid if file == "valid.csv" else dataset.test
        assert rows == [] and dataset.items == good.items and dataset.events == good.events


def test_a_bundle_with_an_unknown_member_is_left_out_whole(tmp_path: Path) -> None:
    root = _write(tmp_path, bundles_csv="bundle_id,item_id\nb1,i1\nb1,i2\nb2,i1\nb2,i99\n")
    dataset = read_dataset(root, on_error="skip")
    assert list(dataset.bundles) == ["b1"]
    assert [_where(e) for e in dataset.errors] == [("bundles.csv", 5, "item_id")]
    root = _write(tmp_path / "used", bundles_csv="bundle_id,item_id\nb1,i1\nb1,i99\n")
    dataset = read_dataset(root, on_error="skip")  # events on the dropped bundle go too, and are reported
    assert [_where(e) for e in dataset.errors] == [
        ("bundles.csv", 3, "item_id"),
        ("bundle_info.csv", 2, "bundle_id"),
        ("events.csv", 3, "target_id"),
    ]


def test_errors_are_capped_but_all_counted(tmp_path: Path) -> None:
    rows = "".join(f"u{n},teleport,item,i1,{n},\n" for n in range(200))
    root = _write(tmp_path, events_csv="user_id,event_type,target_type,target_id,timestamp,value\n" + rows)
    with pytest.raises(DatasetError) as caught:
        read_dataset(root)
    assert len(caught.value.errors) == 50 and caught.value.total == 200
    assert "and 190 more" in str(caught.value)


def test_file_level_problems_raise_in_both_modes(tmp_path: Path) -> None:
    for mode in ("reject", "skip"):
        with pytest.raises(DatasetError, match=r"items\.csv"):
            read_dataset(_write(tmp_path / f"{mode}-no-items", items_csv=b""), on_error=mode)
        with pytest.raises(DatasetError, match=r"dataset\.json"):
            read_dataset(_write(tmp_path / f"{mode}-json", dataset_json='{"task": "clustering"}'), on_error=mode)
        with pytest.raises(DatasetError, match="header row is required"):
            read_dataset(_write(tmp_path / f"{mode}-empty", valid_csv=""), on_error=mode)


def test_optional_files_bom_and_column_order(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        dataset_json=b"",
        bundles_csv=b"",
        bundle_info_csv=b"",
        valid_csv=b"",
        test_csv=b"",
        events_csv=b"",
        items_csv="\ufeffprice,item_id,title,category,brand,attributes\n9.5,i1,Boots,,,\n",
    )
    dataset = read_dataset(root)
    assert dataset.items["i1"].price == 9.5 and dataset.items["i1"].title == "Boots"
    assert dataset.info.name == root.name and dataset.info.task == "next_item" and not dataset.info.declared
    assert dataset.events == [] and dataset.bundles == {} and dataset.bundle_info_rows is None


def test_without_timestamps_the_position_per_user_is_the_order(tmp_path: Path) -> None:
    events = (
        "user_id,event_type,target_type,target_id,timestamp,value\nu1,like,item,i1,,\nu2,like,item,i2,,\n"
        "u1,like,item,i3,,\n"
    )
    root = _write(tmp_path, events_csv=events, dataset_json=json.dumps({"timestamps": "none", "task": "next_item"}))
    assert [(e.user_id, e.timestamp) for e in read_dataset(root).events] == [("u1", 1), ("u2", 1), ("u1", 2)]
    root = _write(tmp_path / "unix", events_csv=events)
    with pytest.raises(DatasetError, match="timestamp: is empty"):
        read_dataset(root)


def test_unknown_ids_are_allowed_where_dataset_json_says_so(tmp_path: Path) -> None:
    info = json.dumps({"task": "next_item", "allow_unknown_ids": ["events.csv"]})
    root = _write(tmp_path, dataset_json=info, events_csv=BASE["events.csv"] + "u3,view,item,i99,1700000300,\n")
    assert read_dataset(root).events[-1].target_id == "i99"


def test_progress_is_reported_per_file(tmp_path: Path) -> None:
    calls: list[tuple[str, int]] = []
    read_dataset(_write(tmp_path), progress=lambda name, done: calls.append((name, done)))
    assert calls == [
        ("items.csv", 4),
        ("bundles.csv", 2),
        ("bundle_info.csv", 1),
        ("events.csv", 3),
        ("valid.csv", 1),
        ("test.csv", 1),
    ]


# -- the demo shop --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object], Dataset]:
    root = tmp_path_factory.mktemp("demo") / "seed1"
    summary = generate_demo_shop(root, seed=1)
    return root, summary, read_dataset(root, on_error="reject")


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_demo_is_deterministic_by_seed(demo: tuple[Path, dict[str, object], Dataset], tmp_path: Path) -> None:
    root, summary, _ = demo
    again = generate_demo_shop(tmp_path / "again", seed=1)
    assert _files(tmp_path / "again") == _files(root)
    assert {k: v for k, v in again.items() if k != "path"} == {k: v for k, v in summary.items() if k != "path"}
    generate_demo_shop(tmp_path / "small-1", seed=1, users=50, items=300, bundles=30)
    generate_demo_shop(tmp_path / "small-2", seed=2, users=50, items=300, bundles=30)
    one, two = _files(tmp_path / "small-1"), _files(tmp_path / "small-2")
    assert one.keys() == two.keys() and all(one[name] != two[name] for name in ("items.csv", "events.csv"))


def test_demo_reads_back_cleanly_with_the_sizes_asked(demo: tuple[Path, dict[str, object], Dataset]) -> None:
    _, summary, dataset = demo
    assert dataset.info.name == "demo-shop" and dataset.info.task == "next_item" and dataset.info.licence == "generated"
    assert dataset.info.reference_results == ()
    assert dataset.counts() == dict(dataset.info.counts)
    assert len(dataset.items) == 2000 and len(dataset.bundles) == 300 and summary["users"] == 500
    assert 40_000 <= len(dataset.events) <= 60_000
    assert all(2 <= len(b.item_ids) <= 5 and b.title for b in dataset.bundles.values())
    assert {e.event_type for e in dataset.events} >= {"view", "click", "add_to_cart", "purchase"}
    assert {e.target_type for e in dataset.events if e.event_type == "purchase"} == {"item", "bundle"}


def test_demo_bundles_are_complementary(demo: tuple[Path, dict[str, object], Dataset]) -> None:
    _, _, dataset = demo
    spans = [len({dataset.items[i].category for i in b.item_ids}) for b in dataset.bundles.values()]
    assert sum(s >= 2 for s in spans) >= 0.8 * len(spans)
    assert len({item.category.split(" > ")[0] for item in dataset.items.values()}) >= 6


def test_demo_funnels_run_forward_in_time(demo: tuple[Path, dict[str, object], Dataset]) -> None:
    _, _, dataset = demo
    first: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
    last_seen: dict[str, int] = {}
    for event in dataset.events:
        assert event.timestamp >= last_seen.get(event.user_id, 0), "events are grouped by user, in time order"
        last_seen[event.user_id] = event.timestamp
        first[(event.user_id, event.target_type, event.target_id)].setdefault(event.event_type, event.timestamp)
    steps = ("view", "click", "add_to_cart", "purchase")
    for times in first.values():
        present = [times[s] for s in steps if s in times]
        assert present == sorted(present)
        if "purchase" in times:
            assert "view" in times and "add_to_cart" in times
    history = {(e.user_id, e.target_id) for e in dataset.events}
    held_out = dataset.valid + dataset.test
    assert held_out and not any((h.user_id, h.target_id) in history for h in held_out)
    assert {h.user_id for h in dataset.valid} == {h.user_id for h in dataset.test}
