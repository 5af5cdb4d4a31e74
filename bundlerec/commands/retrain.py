"""`bundlerec retrain` and `bundlerec models`: continuous training behind the promotion gate, and
the operator's view and hands on which version serves (bundlerec.training.retrain,
bundlerec.ranking.promotion)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
import sys
import time
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict

from bundlerec.ranking.promotion import (
    PromotionError,
    decisions,
    pin_serving,
    previous_version,
    promote,
    record,
    rollback,
    serving_version,
    too_old,
)
from bundlerec.runtime.settings import CallerSettings

EXPIRED_EXIT = 3  # the serving version is past its maximum age and no new version qualified


class RetrainSettings(CallerSettings):
    """`bundlerec retrain`'s settings (env prefix BUNDLEREC_RETRAIN_; the flags override them)."""

    model_config = SettingsConfigDict(env_prefix="BUNDLEREC_RETRAIN_", extra="ignore")

    profile_address: str = Field("127.0.0.1:50051", description="The profile service (ExportTrainingEvents).")
    candidate_address: str = Field("127.0.0.1:50052", description="The candidate service (ListItems, ListBundles).")
    models_dir: str = Field("var/bundlerec/models", description="The models directory the services follow.")
    encoder_dir: str = Field("var/bundlerec/encoder", description="The exported text encoder.")
    work_dir: str = Field("var/bundlerec/retrain", description="Where the exported training set is written.")
    window_days: float = Field(1.0, gt=0, le=30, description="The newest window: evaluated on, never trained on.")
    history_days: float = Field(90.0, gt=0, le=3650, description="How far back the training set reaches.")
    min_window_shoppers: int = Field(
        20, ge=1, description="Fewest shoppers with a purchase in the window for the gate to decide on."
    )
    tolerance: float = Field(
        0.02, ge=0, le=1, description="How much worse (relative) than the serving version a new one may be and serve."
    )
    max_model_age_days: float = Field(
        30.0,
        gt=0,
        description="Past this age of its lineage (the full training its weights descend from) the serving "
        "version no longer blocks a new one that beats popularity, retrain trains from scratch, and older versions "
        "are removed: how long a model may remember an erased user while retrain runs nightly (docs/learning.md).",
    )


def add_retrain_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="a dataset directory in the import format instead of the services")
    source.add_argument("--profile", help="profile service address (default: the setting)")
    parser.add_argument("--candidate", help="candidate service address (default: the setting)")
    parser.add_argument("--models", help="models directory (default: the setting)")
    parser.add_argument("--full", action="store_true", help="train from scratch instead of from the serving version")
    parser.add_argument("--window-days", type=float, help="the evaluation window (default: the setting, 1)")
    parser.add_argument("--history-days", type=float, help="how far back to read (default: the setting, 90)")
    parser.add_argument("--min-window-shoppers", type=int, help="(default: the setting, 20)")
    parser.add_argument("--tolerance", type=float, help="relative (default: the setting, 0.02)")
    parser.add_argument("--max-model-age-days", type=float, help="(default: the setting, 30)")
    parser.add_argument("--no-text", action="store_true", help="train without the items' text")
    parser.add_argument("--epochs", type=int, help="at most this many epochs (default: training's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--keep-data", action="store_true", help="keep the exported training set in the work dir")


def add_models_commands(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", help="models directory (default: BUNDLEREC_RETRAIN_MODELS_DIR or var/bundlerec/models)"
    )
    sub = parser.add_subparsers(dest="models_command", required=True)
    sub.add_parser("list", help="every version: created, figures, decision, which one serves")
    chosen = sub.add_parser("promote", help="serve this version (the services follow within seconds)")
    chosen.add_argument("version")
    back = sub.add_parser("rollback", help="serve again the version that served before the current one")
    for command in (chosen, back):
        command.add_argument("--force", action="store_true", help="even past the maximum model age")


def run_models(args: argparse.Namespace) -> int:
    settings = RetrainSettings()
    models_dir = Path(args.models or settings.models_dir)
    if args.models_command == "list":
        print(list_versions(models_dir))
        return 0
    try:
        if args.models_command == "promote":
            target = args.version
        else:
            target = previous_version(models_dir, serving_version(models_dir))
        age = _lineage_days(models_dir, target)
        refusal = too_old(target, age, settings.max_model_age_days) if age is not None else ""
        if refusal and not args.force:
            raise PromotionError(f"{refusal}; --force to serve it anyway")
        if args.models_command == "promote":
            decision = promote(models_dir, target, "bundlerec models promote")
        else:
            decision = rollback(models_dir)
    except PromotionError as error:
        print(f"bundlerec models {args.models_command}: {error}", file=sys.stderr)
        return 2
    print(f"{decision.decision}: {decision.version} (was {decision.previous or 'none'})")
    return 0


def _lineage_days(models_dir: Path, version: str) -> float | None:
    from bundlerec.ranking.artifact import ModelArtifactError, ModelManifest

    try:
        return ModelManifest.read(models_dir / version).lineage_age_days(dt.datetime.now(dt.UTC))
    except (ModelArtifactError, ValueError, OSError):
        return None  # promote and rollback say what is wrong with it


def list_versions(models_dir: Path) -> str:
    from bundlerec.ranking.artifact import ModelArtifactError, ModelManifest, model_versions

    serving = serving_version(models_dir)
    history: dict[str, list[str]] = {}  # per version: the gate's verdict with its figures, then what followed
    for decision in decisions(models_dir):
        figures = ", ".join(f"{k} {v:.4f}" for k, v in decision.figures.items())
        history.setdefault(decision.version, []).append(
            f"{decision.decision} {decision.at}" + (f" ({figures})" if figures else "")
        )
    lines = [f"{'':2s}{'version':22s} {'created (UTC)':20s} {'valid':>7s}  decisions"]
    for version in model_versions(models_dir):
        try:
            manifest = ModelManifest.read(models_dir / version)
            created = manifest.created_at[:19].replace("T", " ")
            metric = next((v for k, v in manifest.metrics.items() if k.startswith("NDCG@")), float("nan"))
        except ModelArtifactError as error:
            created, metric = f"broken: {error}"[:20], float("nan")
        mark = "* " if version == serving else "  "
        lines.append(f"{mark}{version:22s} {created:20s} {metric:7.4f}  {'; '.join(history.get(version, ['-']))}")
    lines.append("* serves" if serving else "no version serves yet")
    return "\n".join(lines)


def run_retrain(args: argparse.Namespace) -> int:
    import torch

    from bundlerec.datasets import read_dataset
    from bundlerec.training.export import write_model_dir
    from bundlerec.training.retrain import decide, gate, load_serving, retrain, time_split
    from bundlerec.training.text import item_text_vectors
    from bundlerec.training.train import TrainSettings, selection_metric

    settings = _settings(args)
    if settings is None:
        return 2
    models_dir = Path(settings.models_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    now = dt.datetime.now(dt.UTC)
    exported = None
    if args.data:
        path = Path(args.data)
    else:
        from bundlerec.commands.recorded import export_recorded

        exported = path = Path(settings.work_dir) / f"recorded-{now:%Y%m%d-%H%M%S}"
        export_recorded(
            path,
            profile=settings.profile_address,
            candidate=settings.candidate_address,
            security=settings.client_security(),
            since=now - dt.timedelta(days=settings.history_days),
            until=now,
            progress=_say,
        )
    try:
        dataset, window_start = time_split(read_dataset(path), settings.window_days, settings.min_window_shoppers)
    except ValueError as error:
        print(f"bundlerec retrain: {error}", file=sys.stderr)
        return 1
    finally:
        if exported is not None and not args.keep_data:
            shutil.rmtree(exported, ignore_errors=True)  # pseudonymous, but an erasure must not outlive it
    current = pin_serving(models_dir)  # the new version must not serve as the newest before the gate decides
    serving = load_serving(models_dir, current)
    vectors, identity = (None, None) if args.no_text else item_text_vectors(dataset, Path(settings.encoder_dir))
    expired = serving is not None and serving.age_days(now) > settings.max_model_age_days
    same_text = serving is not None and serving.manifest.text_encoder == identity
    # a serving version that saw the window would leak it into a warm start, and the gate's figures
    seen_window = serving is not None and not 0 < serving.manifest.data_until <= window_start
    full = args.full or serving is None or expired or not same_text or seen_window
    why_full = (
        "--full"
        if args.full
        else "nothing serves"
        if serving is None
        else "the serving lineage is past the maximum model age"
        if expired
        else "the serving version was trained on the window"
        if seen_window
        else "the text encoder differs from the serving version's"
    )
    base = dataclasses.replace(TrainSettings(), seed=args.seed, use_text=identity is not None)
    if args.epochs:
        base.max_epochs = args.epochs
    _say(f"retraining {f'from scratch ({why_full})' if full else f'from {current}'} before {_day(window_start)}")
    since = serving.manifest.data_until if serving is not None else 0
    trained, seconds = retrain(dataset, serving, base, vectors, full=full, since=since, progress=_say)
    version = write_model_dir(
        trained,
        models_dir,
        dataset_name=dataset.info.name,
        text_encoder=identity,
        data_until=window_start,
        lineage_since="" if full or serving is None else serving.manifest.lineage_started,
    )
    started = time.monotonic()
    reference = serving if same_text else None  # a model of another encoder cannot rank these texts
    ok, why, figures = gate(
        dataset,
        trained,
        reference,
        vectors,
        tolerance=settings.tolerance,
        max_age_days=settings.max_model_age_days,
        now=now,
        window_start=window_start,
    )
    if ok and serving_version(models_dir) != current:  # an operator promoted or rolled back meanwhile
        ok, why = False, f"{why}; but the serving version changed during the run (was {current or 'none'})"
    details = {
        "window_start": _day(window_start),
        "window_days": settings.window_days,
        "tolerance": settings.tolerance,
        "max_model_age_days": settings.max_model_age_days,
        "warm_start": not full,
        "train_seconds": round(seconds, 1),
        "gate_seconds": round(time.monotonic() - started, 1),
    }
    metric = selection_metric(dataset.info.task)
    decision = record(models_dir, decide(version.name, ok, why, figures, metric, details))
    print(f"{decision.decision}: {version.name} ({why})")
    for old in prune(models_dir, settings.max_model_age_days, now):
        _say(f"removed {old}: past the maximum model age and not serving")
    return EXPIRED_EXIT if expired and not ok else 0


def prune(models_dir: Path, max_age_days: float, now: dt.datetime) -> list[str]:
    """Removes the versions whose lineage is past the maximum age, except the serving one: no
    promote or rollback can bring back a model trained before an erasure it must forget."""
    from bundlerec.ranking.artifact import ModelArtifactError, ModelManifest, model_versions

    removed = []
    serving = serving_version(models_dir)
    for version in model_versions(models_dir):
        try:
            age = ModelManifest.read(models_dir / version).lineage_age_days(now)
        except (ModelArtifactError, ValueError):
            continue
        if version != serving and age > max_age_days:
            shutil.rmtree(models_dir / version, ignore_errors=True)
            removed.append(version)
    return removed


def _settings(args: argparse.Namespace) -> RetrainSettings | None:
    """The settings, the flags given overriding the environment's, checked against their bounds."""
    flags = {
        "profile_address": args.profile,
        "candidate_address": args.candidate,
        "models_dir": args.models,
        "window_days": args.window_days,
        "history_days": args.history_days,
        "min_window_shoppers": args.min_window_shoppers,
        "tolerance": args.tolerance,
        "max_model_age_days": args.max_model_age_days,
    }
    try:
        return RetrainSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as error:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in error.errors())
        print(f"bundlerec retrain: {problems}", file=sys.stderr)
        return None


def _day(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def _say(line: str) -> None:
    print(line, file=sys.stderr)
