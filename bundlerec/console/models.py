"""The models page's data: the versions of the models directory the ranker serves from, their
validation figures and training curves, the promotion log, and the explicit promote or rollback
(bundlerec.ranking.promotion, as `bundlerec models` does, with the same maximum-age refusal)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from bundlerec.ranking.artifact import ModelArtifactError, ModelManifest, model_versions
from bundlerec.ranking.promotion import (
    Decision,
    PromotionError,
    decisions,
    previous_version,
    promote,
    rollback,
    serving_version,
    too_old,
)

ACTIONS = ("promote", "rollback")


class ModelsView:
    def __init__(self, models_dir: Path, max_age_days: float) -> None:
        self.models_dir, self.max_age_days = models_dir, max_age_days

    def read(self) -> dict[str, Any]:
        serving = serving_version(self.models_dir)
        logged = decisions(self.models_dir)
        versions = []
        curves: dict[str, Any] = {}
        for version in reversed(model_versions(self.models_dir)):  # newest first
            row: dict[str, Any] = {"version": version, "serving": version == serving}
            try:
                manifest = ModelManifest.read(self.models_dir / version)
            except ModelArtifactError as error:
                row["broken"] = str(error)
            else:
                row["created"] = manifest.created_at[:19].replace("T", " ")
                row["dataset"] = manifest.dataset
                row["metrics"] = {k: v for k, v in manifest.metrics.items() if "@" in k and "cold" not in k}
                row["epochs"] = len(manifest.epochs)
                curves[version] = [
                    {"epoch": e.get("epoch"), "loss": e.get("loss"), "metric": e.get("metric")} for e in manifest.epochs
                ]
            row["decisions"] = [d for d in logged if d.version == version]
            versions.append(row)
        return {
            "serving": serving,
            "previous": previous_version(self.models_dir, serving) if serving else "",
            "versions": versions,
            "log": list(reversed(logged))[:50],
            "curves": json.dumps(curves),
        }

    def change(self, action: str, version: str, operator: str) -> Decision:
        """Promotes `version`, or rolls back to it (it must be the version that served before the
        current one). ValueError says why not."""
        if action not in ACTIONS:
            raise ValueError(f"action: one of {', '.join(ACTIONS)}")
        if action == "rollback":
            expected = previous_version(self.models_dir, serving_version(self.models_dir))
            if version != expected:
                raise ValueError(f"a rollback goes to {expected or 'no version'}, not {version}")
        try:
            manifest = ModelManifest.read(self.models_dir / version)
        except (ModelArtifactError, OSError) as error:
            raise ValueError(f"version {version}: {error}") from None
        refusal = too_old(version, manifest.lineage_age_days(dt.datetime.now(dt.UTC)), self.max_age_days)
        if refusal:
            raise ValueError(f"{refusal}; `bundlerec models promote --force` if you must")
        try:
            if action == "promote":
                return promote(self.models_dir, version, f"console: {operator}")
            return rollback(self.models_dir, f"console: {operator}")
        except PromotionError as error:
            raise ValueError(str(error)) from None
