"""Which model version serves, and every decision that changed it: the models directory's pointer
and log, shared by the ranker and candidate services (which follow the pointer), `bundlerec
retrain` (whose gate writes it) and `bundlerec models` (list, promote, rollback).

    MODELS_DIR/serving.json      {"version": ..., "since": ...}: the version the services follow;
                                 replaced atomically (write, then rename), so a reader sees the
                                 old pointer or the new one, never half of one
    MODELS_DIR/decisions.jsonl   one JSON line per decision, appended: promoted, rejected, rolled
                                 back, with both figures of a gated decision

Without serving.json (a models directory from before the gate, or one only `bundlerec train`
wrote to), the newest complete version serves, as it always did. A version the pointer names
that is not (or no longer) complete serves nothing new: the services keep what they have.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bundlerec.ranking.artifact import model_versions

SERVING_FILE = "serving.json"
DECISIONS_FILE = "decisions.jsonl"

PROMOTED = "promoted"  # by the gate
REJECTED = "rejected"  # by the gate: kept on disk with its report, never served
PROMOTED_BY_HAND = "promoted by hand"  # bundlerec models promote, or bundlerec train
ROLLED_BACK = "rolled back"  # bundlerec models rollback: the version served before the current one
SERVES = (PROMOTED, PROMOTED_BY_HAND, ROLLED_BACK)


class PromotionError(ValueError):
    """The request names no version that can serve."""


@dataclass
class Decision:
    version: str
    decision: str  # one of the constants above
    reason: str
    previous: str = ""  # the version serving before the decision ("" for none)
    at: str = ""  # ISO 8601, UTC; filled when recorded
    figures: dict[str, float] = field(default_factory=dict)  # e.g. {"candidate NDCG@10": ..., "serving NDCG@10": ...}
    details: dict[str, object] = field(default_factory=dict)  # window, tolerance, ages, timings

    @classmethod
    def from_json(cls, line: str) -> Decision:
        data = json.loads(line)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def serving_version(models_dir: Path) -> str:
    """The version the services should serve: the pointer's, else the newest complete one; "" for none."""
    pointer = _read_pointer(models_dir)
    versions = model_versions(models_dir)
    if pointer is None:
        return versions[-1] if versions else ""
    return pointer if pointer in versions else ""


def decisions(models_dir: Path) -> list[Decision]:
    """Every recorded decision, oldest first (a line that does not parse is skipped)."""
    path = models_dir / DECISIONS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(Decision.from_json(line))
        except (TypeError, ValueError):
            continue
    return out


def record(models_dir: Path, decision: Decision) -> Decision:
    """Appends `decision` to the log and, when it serves its version, moves the pointer to it."""
    if decision.decision in SERVES and decision.version not in model_versions(models_dir):
        raise PromotionError(f"model version {decision.version!r} is not a complete version in the models directory")
    decision.at = decision.at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    decision.previous = decision.previous or serving_version(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    with (models_dir / DECISIONS_FILE).open("a") as log:
        log.write(json.dumps(asdict(decision), sort_keys=True) + "\n")
        log.flush()
        os.fsync(log.fileno())
    if decision.decision in SERVES:
        _write_pointer(models_dir, decision.version, decision.at)
    return decision


def pin_serving(models_dir: Path) -> str:
    """Writes the pointer where there is none, naming what serves now ("" for nothing), so a version
    written next is not served as the newest before a decision; returns the serving version."""
    current = serving_version(models_dir)
    if _read_pointer(models_dir) is None:
        _write_pointer(models_dir, current, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    return current


def too_old(version: str, lineage_days: float, max_age_days: float) -> str:
    """Why `version` may not be served by hand: its lineage is past the maximum model age, so it may
    remember erased users; "" when it is not (`bundlerec models` and the console both ask)."""
    if lineage_days <= max_age_days:
        return ""
    return (
        f"{version}'s lineage is {lineage_days:.0f} days old, past the maximum model age "
        f"({max_age_days:g} days: it may remember erased users)"
    )


def promote(models_dir: Path, version: str, reason: str) -> Decision:
    return record(models_dir, Decision(version, PROMOTED_BY_HAND, reason))


def rollback(models_dir: Path, reason: str = "bundlerec models rollback") -> Decision:
    """Serves again the version that served before the current one."""
    current = serving_version(models_dir)
    previous = previous_version(models_dir, current)
    if not previous:
        raise PromotionError(f"no version served before {current or 'the current one'} to roll back to")
    return record(models_dir, Decision(previous, ROLLED_BACK, reason, previous=current))


def previous_version(models_dir: Path, current: str) -> str:
    """The version that served before `current` was promoted (if still complete): a rollback
    follows the chain of promotions back, so two rollbacks go two versions back. Where `current`
    never went through a promotion (it served as the newest), the one before it by name."""
    available = model_versions(models_dir)
    for decision in reversed(decisions(models_dir)):
        if decision.decision in SERVES and decision.decision != ROLLED_BACK and decision.version == current:
            return decision.previous if decision.previous in available else ""
    older = [v for v in servable_versions(models_dir) if v < current]
    return older[-1] if older else ""


def servable_versions(models_dir: Path) -> list[str]:
    """Complete versions the gate did not reject, oldest first: what a service may fall back to
    when the serving version does not load."""
    logged = decisions(models_dir)
    rejected = {d.version for d in logged if d.decision == REJECTED}
    served = {d.version for d in logged if d.decision in SERVES}
    return [v for v in model_versions(models_dir) if v not in rejected or v in served]


def _write_pointer(models_dir: Path, version: str, since: str) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".{SERVING_FILE}.{os.getpid()}"
    staging.write_text(json.dumps({"version": version, "since": since}))
    os.replace(staging, models_dir / SERVING_FILE)


def _read_pointer(models_dir: Path) -> str | None:
    try:
        data = json.loads((models_dir / SERVING_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return ""  # unreadable: serve nothing new rather than guess
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, str) else ""
