"""The four services on a small demo shop, in the test's process: the gateway's test suite."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from sqlalchemy.engine import make_url

from bundlerec.commands.importer import ImportTargets, import_dataset
from bundlerec.datasets import read_dataset
from bundlerec.datasets.demo import generate_demo_shop
from bundlerec.gateway.server import Gateway, assemble
from bundlerec.gateway.settings import GatewaySettings
from bundlerec.runtime.server import RunningServer, start_server
from bundlerec.v1 import gateway_pb2_grpc
from tests.harness.servers import (
    CandidateServer,
    ProfileServer,
    RankerServer,
    running_candidate,
    running_profile,
    running_ranker,
)


@dataclass
class Suite:
    root: Path
    catalogue_url: str
    profile_url: str
    models: Path
    items: dict[str, tuple[str, str, float, str]]  # item id → (category, brand, price, title)
    purchases: dict[str, set[str]]  # user → items bought


async def build_suite(root: Path, encoder_dir: str) -> Suite:
    """The demo shop (seed 2, small) imported into SQLite stores, and a ranker trained on it."""
    torch = pytest.importorskip("torch", reason="training the test model needs the train extra (torch)")
    from bundlerec.training.export import write_model_dir
    from bundlerec.training.train import TrainSettings, train

    generate_demo_shop(root / "shop", seed=2, users=60, items=150, bundles=30)
    targets = ImportTargets(
        catalogue_url=f"sqlite:///{root / 'catalogue.sqlite3'}",
        profile_url=f"sqlite:///{root / 'profile.sqlite3'}",
        encoder_dir=encoder_dir,
    )
    await import_dataset(str(root / "shop"), targets, say=lambda _: None)
    dataset = read_dataset(root / "shop")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    trained = functools.partial(train, progress=lambda _: None)(dataset, TrainSettings(max_epochs=1, dim=32), None)
    torch.set_num_threads(threads)
    write_model_dir(trained, root / "models", dataset_name="demo", text_encoder=None, curves=False)
    purchases: dict[str, set[str]] = {}
    for event in dataset.events:
        if event.event_type == "purchase" and event.target_type == "item":
            purchases.setdefault(event.user_id, set()).add(event.target_id)
    items = {i.item_id: (i.category, i.brand, i.price or 0.0, i.title) for i in dataset.items.values()}
    return Suite(root, targets.catalogue_url, targets.profile_url or "", root / "models", items, purchases)


@dataclass
class Running:
    profile: ProfileServer
    candidate: CandidateServer
    ranker: RankerServer
    gateway: Gateway
    server: RunningServer
    stub: gateway_pb2_grpc.RecommendationServiceStub


@contextlib.asynccontextmanager
async def running_suite(
    suite: Suite,
    encoder_dir: str,
    profile_settings: dict | None = None,
    candidate_settings: dict | None = None,
    **gateway: object,
) -> AsyncIterator[Running]:
    async with (
        running_profile(suite.profile_url, **(profile_settings or {})) as profile,
        running_candidate(suite.catalogue_url, encoder_dir, **(candidate_settings or {})) as candidate,
        running_ranker(suite.models) as ranker,
    ):
        values: dict[str, object] = {
            "port": 0,
            "metrics_port": 0,
            "profile_address": profile.address,
            "candidate_address": f"127.0.0.1:{candidate.running.port}",
            "ranker_address": f"127.0.0.1:{ranker.running.port}",
            "deadline_ms": 5000,  # the machine is shared with training jobs; deadlines are tested apart
            "health_interval_seconds": 0.2,
            "exploration_share": 0.0,  # pages the tests compare are not drawn at random; exploration is tested apart
            **gateway,
        }
        settings = GatewaySettings(**values)  # type: ignore[arg-type]
        assembled = await assemble(settings)
        server = await start_server(settings, assembled.parts())
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        stub = gateway_pb2_grpc.RecommendationServiceStub(channel)
        try:
            yield Running(profile, candidate, ranker, assembled, server, stub)
        finally:
            await channel.close()
            await server.stop()


def buyer(suite: Suite) -> str:
    """The suite's shopper with the most purchases."""
    return max(sorted(suite.purchases), key=lambda u: len(suite.purchases[u]))


def copied(shop: Suite, folder: Path) -> Suite:
    """The suite on copies of its two SQLite stores: no other test's writes reach them."""
    urls = {}
    for name in ("catalogue_url", "profile_url"):
        source = Path(make_url(getattr(shop, name)).database or "")
        target = folder / source.name
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{source}{suffix}").exists():
                shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")
        urls[name] = f"sqlite:///{target}"
    return dataclasses.replace(shop, **urls)
