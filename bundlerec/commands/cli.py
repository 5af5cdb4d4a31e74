"""The `bundlerec` command: serve, migrate, import, train, evaluate, recommend-batch, retrain, models, experiments,
simulate, demo, loadtest, and the gateway's client commands recommend, track and forget.

`bundlerec serve SERVICE --help` lists that service's settings; each is also read from the
environment as BUNDLEREC_<SERVICE>_<SETTING> (for example BUNDLEREC_PROFILE_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import CliApp

from bundlerec.client import add_client_commands, run_client_command
from bundlerec.commands.retrain import add_models_commands, add_retrain_options, run_models, run_retrain
from bundlerec.runtime.logs import configure_logging
from bundlerec.runtime.settings import ServiceSettings


@dataclass(frozen=True)
class ServiceEntry:
    """What `serve` and `migrate` need of a service."""

    settings: type[ServiceSettings]
    build: Callable[[Any], Awaitable[Any]]  # settings -> ServiceParts
    migrations: str | None = None  # the Alembic script location; None: the service keeps no database


# The services this command composes, each imported only when asked for (after the native thread
# pools are set: importing a service loads numpy, FAISS or onnxruntime).
def _profile() -> ServiceEntry:
    from bundlerec.profile.server import build
    from bundlerec.profile.settings import ProfileSettings
    from bundlerec.profile.store import MIGRATIONS

    return ServiceEntry(ProfileSettings, build, MIGRATIONS)


def _candidate() -> ServiceEntry:
    from bundlerec.candidate.catalogue import MIGRATIONS
    from bundlerec.candidate.server import build
    from bundlerec.candidate.settings import CandidateSettings

    return ServiceEntry(CandidateSettings, build, MIGRATIONS)


def _ranker() -> ServiceEntry:
    from bundlerec.ranker.server import build
    from bundlerec.ranker.settings import RankerSettings

    return ServiceEntry(RankerSettings, build)


def _gateway() -> ServiceEntry:
    from bundlerec.gateway.server import build
    from bundlerec.gateway.settings import GatewaySettings

    return ServiceEntry(GatewaySettings, build)


SERVICES: dict[str, Callable[[], ServiceEntry]] = {
    "profile": _profile,
    "candidate": _candidate,
    "ranker": _ranker,
    "gateway": _gateway,
}


def _settings(service: str, args: Sequence[str]) -> ServiceSettings:
    settings_class = SERVICES[service]().settings
    settings_class.model_config["cli_prog_name"] = f"bundlerec serve {service}"
    try:
        return CliApp.run(settings_class, cli_args=list(args))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"bundlerec serve {service}: invalid settings: {problems}") from None


# Native thread pools (OpenMP for FAISS, OpenBLAS or MKL for numpy) start one thread per core and
# spin after each call; a service runs small requests one at a time on its event loop, where extra
# threads only burn CPU (one A/B, `bench/cpu_per_page.py --rate 40`: 22.5 against 21.0 ms of CPU
# per page, the four services together). One thread each unless the environment says otherwise;
# the candidate service's search_threads and the ranker's intra_op_threads still set their own.
NATIVE_THREAD_POOLS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _serve(service: str, args: Sequence[str]) -> int:
    for pool in NATIVE_THREAD_POOLS:  # before anything loads numpy, FAISS or onnxruntime
        os.environ.setdefault(pool, "1")
    from bundlerec.runtime.server import run_loop, serve_until_signal

    entry = SERVICES[service]()
    settings = _settings(service, args)
    configure_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        parts = await entry.build(settings)
        await serve_until_signal(settings, parts)

    run_loop(main(), settings.event_loop)
    return 0


def _migrate(service: str, args: Sequence[str]) -> int:
    from bundlerec import db

    entry = SERVICES[service]()
    if entry.migrations is None:
        print(f"bundlerec migrate {service}: this service keeps no database", file=sys.stderr)
        return 2
    settings = _settings(service, args)
    configure_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        engine = db.create_engine(settings.database_url)  # type: ignore[attr-defined]
        try:
            await db.upgrade_to_head(engine, entry.migrations)
        finally:
            await engine.dispose()

    asyncio.run(main())
    print(f"{service}: database at the newest migration")
    return 0


def _export_encoder(out: str) -> int:
    try:
        from bundlerec.encoder.export import export_text_encoder
    except ImportError as exc:
        print(f"bundlerec encoder export needs the train extra (pip install -e '.[train]'): {exc}", file=sys.stderr)
        return 2
    path = export_text_encoder(Path(out))
    print(f"text encoder exported to {path}")
    return 0


def _import(path: str, on_error: str, *, events: bool) -> int:
    """Imports into the stores the services use: their settings (environment) give the URLs."""
    from bundlerec.candidate.settings import CandidateSettings
    from bundlerec.commands.importer import ImportTargets, import_dataset
    from bundlerec.errors import BundlerecError
    from bundlerec.profile.settings import ProfileSettings

    candidate, profile = CandidateSettings(), ProfileSettings()
    targets = ImportTargets(
        catalogue_url=candidate.database_url,
        profile_url=profile.database_url if events else None,
        encoder_dir=candidate.encoder_dir,
        profile_key_secret=profile.event_key_secret.get_secret_value().encode(),
    )
    configure_logging("warning", "text")
    try:
        asyncio.run(import_dataset(path, targets, on_error=on_error))
    except BundlerecError as exc:
        print(f"bundlerec import: {exc}", file=sys.stderr)
        return 1
    return 0


def _training_commands():  # a module, or None
    """`train` and `evaluate` exist only where the train extra (torch) is installed."""
    try:
        from bundlerec.commands import training as commands
    except ModuleNotFoundError as error:
        if error.name != "torch":
            raise
        return None
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bundlerec", description="Real-time personalized bundle recommendations.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run one service", add_help=False)
    serve.add_argument("service", choices=sorted(SERVICES))
    migrate = commands.add_parser("migrate", help="apply a service's database migrations", add_help=False)
    migrate.add_argument("service", choices=sorted(SERVICES))
    encoder = commands.add_parser("encoder", help="the pretrained text encoder")
    encoder_commands = encoder.add_subparsers(dest="encoder_command", required=True)
    export = encoder_commands.add_parser(
        "export", help="export all-MiniLM-L6-v2 to ONNX for serving (needs the train extra: torch)"
    )
    export.add_argument("--out", default="var/bundlerec/encoder", help="directory to write (default: %(default)s)")
    demo_data = commands.add_parser("demo-data", help="generate the synthetic demo shop in the import format")
    demo_data.add_argument("--out", required=True, help="directory to write")
    demo_data.add_argument("--seed", type=int, default=1, help="same seed, same files (default: %(default)s)")
    demo_data.add_argument("--users", type=int, default=500, help="shoppers (default: %(default)s)")
    demo_data.add_argument("--items", type=int, default=2000, help="catalogue size (default: %(default)s)")
    demo_data.add_argument("--bundles", type=int, default=300, help="curated bundles (default: %(default)s)")
    importer = commands.add_parser(
        "import", help="load a dataset in the import format (docs/import-format.md) into the stores"
    )
    importer.add_argument("path", help="the dataset directory")
    importer.add_argument(
        "--on-error", choices=["reject", "skip"], default="reject", help="bad rows: reject the import or skip them"
    )
    importer.add_argument("--no-events", action="store_true", help="import the catalogue only")
    training = _training_commands()
    if training is not None:
        training.add_training_options(
            commands.add_parser("train", help="train the Transformer ranker on a dataset (needs the train extra)")
        )
        training.add_evaluation_options(
            commands.add_parser("evaluate", help="full-ranking evaluation against baselines (needs the train extra)")
        )
        from bundlerec.commands.batch import add_batch_options

        add_batch_options(
            commands.add_parser(
                "recommend-batch", help="every shopper's top K of a dataset as CSV, for e-mail (needs the train extra)"
            )
        )
        add_retrain_options(
            commands.add_parser(
                "retrain",
                help="train a new version from what the services recorded; the promotion gate decides if it serves",
            )
        )
    add_models_commands(commands.add_parser("models", help="list model versions, promote one, roll back"))
    from bundlerec.commands.experiments import add_experiments_commands

    add_experiments_commands(commands.add_parser("experiments", help="what each experiment variant's pages drew"))
    from bundlerec.commands.simulate import add_simulate_options

    add_simulate_options(
        commands.add_parser("simulate", help="synthetic shoppers visit a running gateway and answer its pages")
    )
    from bundlerec.commands.console import add_console_options

    add_console_options(commands.add_parser("console", help="the operator console: a web UI over the running services"))
    add_client_commands(commands)
    demo = commands.add_parser("demo", help="run the product on embedded defaults and show what it does")
    demo.add_argument("--workdir", default="var/demo", help="where the demo keeps its database (default: var/demo)")
    demo.add_argument("--keep", action="store_true", help="keep the demo's data from an earlier run")
    demo.add_argument(
        "--serve", action="store_true", help="then keep the services running on their default ports until Ctrl-C"
    )
    from bundlerec.loadtest.command import add_options as add_loadtest_options

    add_loadtest_options(
        commands.add_parser("loadtest", help="drive a running gateway (or ranker, candidate) and report latency")
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        return _serve(args.service, rest)
    if args.command == "migrate":
        return _migrate(args.service, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "encoder":
        return _export_encoder(args.out)
    if args.command == "import":
        return _import(args.path, args.on_error, events=not args.no_events)
    if args.command == "train":
        return training.run_train(args)
    if args.command == "evaluate":
        return training.run_evaluate(args)
    if args.command == "recommend-batch":
        from bundlerec.commands.batch import run_recommend_batch

        return run_recommend_batch(args)
    if args.command == "retrain":
        return run_retrain(args)
    if args.command == "models":
        return run_models(args)
    if args.command == "simulate":
        from bundlerec.commands.simulate import run_simulate

        return run_simulate(args)
    if args.command == "experiments":
        from bundlerec.commands.experiments import run_experiments

        return run_experiments(args)
    if args.command == "console":
        from bundlerec.commands.console import run_console

        return run_console(args)
    if args.command in ("recommend", "track", "forget"):
        return run_client_command(args)
    if args.command == "loadtest":
        from bundlerec.loadtest.command import run_loadtest

        return run_loadtest(args, list(argv) if argv is not None else sys.argv[1:])
    if args.command == "demo-data":
        from bundlerec.datasets.demo import generate_demo_shop

        summary = generate_demo_shop(args.out, seed=args.seed, users=args.users, items=args.items, bundles=args.bundles)
        print(", ".join(f"{k}: {v}" for k, v in summary.items() if not isinstance(v, dict)))
        return 0
    from bundlerec.commands.demo import run_demo

    return run_demo(args.workdir, keep=args.keep, serve=args.serve)


if __name__ == "__main__":
    sys.exit(main())
