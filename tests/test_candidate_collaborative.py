"""The ranker's collaborative vectors in the candidate service: exported with each model version,
fused into item and bundle vectors, searched with the ranker's user vector (two-tower retrieval),
followed as new versions appear. Real model (one epoch on a tiny demo shop), real ONNX, real
servers on port 0, the real sentence encoder."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training the test model needs the train extra (torch)")
ort = pytest.importorskip("onnxruntime")

from bundlerec.candidate.catalogue import CatalogueStore  # noqa: E402
from bundlerec.candidate.collaborative import ModelWatcher, load_collaborative  # noqa: E402
from bundlerec.candidate.index import CatalogueIndex  # noqa: E402
from bundlerec.candidate.model import Item  # noqa: E402
from bundlerec.candidate.service import CandidateService  # noqa: E402
from bundlerec.datasets import Dataset, read_dataset  # noqa: E402
from bundlerec.datasets.demo import generate_demo_shop  # noqa: E402
from bundlerec.encoder.runtime import TextEncoder  # noqa: E402
from bundlerec.ranking.artifact import (  # noqa: E402
    COLLABORATIVE_FILE,
    MANIFEST_FILE,
    ONNX_FILE,
    CollaborativeVectors,
    ModelArtifactError,
    ModelManifest,
)
from bundlerec.ranking.features import EVENT_TYPE_INDEX, Step, encode_sequence  # noqa: E402
from bundlerec.ranking.vocabulary import Vocabulary  # noqa: E402
from bundlerec.v1 import candidate_pb2 as pb  # noqa: E402
from bundlerec.v1 import common_pb2  # noqa: E402
from tests.harness.factories import recent  # noqa: E402
from tests.harness.servers import CandidateServer, eventually, running_candidate  # noqa: E402

TWO_TOWER, VECTOR = pb.CANDIDATE_SOURCE_TWO_TOWER, pb.CANDIDATE_SOURCE_VECTOR
DIM = 32


@dataclasses.dataclass
class Model:
    version: Path  # the model directory write_model_dir wrote (outside any watched models directory)
    dataset: Dataset
    vocabulary: Vocabulary
    torch_model: object  # the trained BundleRanker, eval mode
    vectors: CollaborativeVectors


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    from bundlerec.training.export import write_model_dir
    from bundlerec.training.train import TrainSettings, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("collaborative")
    generate_demo_shop(root / "shop", seed=1, users=60, items=150)
    dataset = read_dataset(root / "shop")
    trained = train(dataset, TrainSettings(max_epochs=1, dim=DIM), None, progress=lambda _: None)
    version = write_model_dir(trained, root / "written", dataset_name="demo", text_encoder=None, curves=False)
    torch.set_num_threads(threads)
    manifest = ModelManifest.read(version)
    vectors = CollaborativeVectors.load(version / COLLABORATIVE_FILE, manifest.vector_dim)
    return Model(version, dataset, trained.data.vocabulary, trained.model.eval(), vectors)


def publish(version: Path, models_dir: Path) -> Path:
    """Copies a version into a models directory whole (hidden, then renamed), as training does."""
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".{version.name}.copying"
    shutil.copytree(version, staging)
    return staging.rename(models_dir / version.name)


def sequences(model: Model, users: int) -> np.ndarray:
    """[users, 5, L] model inputs from real histories of the demo shop."""
    manifest = ModelManifest.read(model.version)
    histories: dict[str, list[Step]] = {}
    for e in model.dataset.events:
        is_bundle = e.target_type == "bundle"
        step = Step(
            0 if is_bundle else model.vocabulary.item(e.target_id),
            model.vocabulary.bundle(e.target_id) if is_bundle else 0,
            EVENT_TYPE_INDEX[e.event_type],
            e.timestamp,
        )
        histories.setdefault(e.user_id, []).append(step)
    chosen = sorted(histories)[:users]
    return np.stack([encode_sequence(histories[u], manifest.max_sequence, clock=manifest.clock) for u in chosen])


def onnx_user_vectors(model: Model, users: int = 4) -> np.ndarray:
    """The user vectors the ranker service returns (RankResponse.user_vector), from the ONNX file."""
    session = ort.InferenceSession(str(model.version / ONNX_FILE), providers=["CPUExecutionProvider"])
    seq = sequences(model, users)
    feeds = {
        "sequence": seq,
        "cand_items": np.full((len(seq), 1, 1), 2, np.int64),
        "cand_bundles": np.zeros((len(seq), 1), np.int64),
        "extra_text": np.zeros((1, 1), np.float32),
    }
    names = {i.name for i in session.get_inputs()}
    return session.run(["user_vector"], {k: v for k, v in feeds.items() if k in names})[0]


def top(ids: list[str], vectors: np.ndarray, user: np.ndarray, k: int) -> list[str]:
    scores = vectors @ user
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


# -- the artifact ----------------------------------------------------------------------------


def test_exported_vectors_are_the_two_tower_part_of_the_models_scores(model: Model) -> None:
    from bundlerec.training.export import ServingRanker

    vocabulary, vectors = model.vocabulary, model.vectors
    assert vectors.item_ids == vocabulary.item_ids and vectors.bundle_ids == vocabulary.bundle_ids
    assert vectors.items.shape == (len(vocabulary.item_ids), DIM) and vectors.items.dtype == np.float32
    assert vectors.bundles.shape == (len(vocabulary.bundle_ids), DIM)
    # Without its other terms (target attention, the co-occurrence part) the
    # model scores <user vector, candidate>: the serving path (sets of up to two members, as the
    # ONNX graph was traced) must agree with the exported rows.
    two_tower_only = copy.deepcopy(model.torch_model)
    with torch.no_grad():
        two_tower_only.target_out.weight.zero_()
        two_tower_only.neural_weight.fill_(1.0)
        two_tower_only.wide_weight.zero_()
    serving = ServingRanker(two_tower_only).eval()
    seq = torch.from_numpy(sequences(model, 6))
    item_rows = torch.arange(2, vocabulary.num_item_rows)
    cand_items = torch.zeros(len(seq), len(item_rows), 2, dtype=torch.long)
    cand_items[:, :, 0] = item_rows
    bundle_rows = torch.arange(2, vocabulary.num_bundle_rows)
    members = torch.from_numpy(vocabulary.bundle_members[2:])
    with torch.no_grad():
        item_scores, user = serving(
            seq, cand_items, torch.zeros(cand_items.shape[:2], dtype=torch.long), torch.zeros(1, 1)
        )
        bundle_scores, _ = serving(
            seq, members.expand(len(seq), -1, -1), bundle_rows.expand(len(seq), -1), torch.zeros(1, 1)
        )
    assert np.allclose(user.numpy() @ vectors.items.T, item_scores.numpy(), atol=1e-4)
    assert np.allclose(user.numpy() @ vectors.bundles.T, bundle_scores.numpy(), atol=1e-4)
    # and the served ONNX user vector ranks with them as PyTorch does
    onnx_user = onnx_user_vectors(model, 6)
    assert np.allclose(onnx_user, user.numpy(), atol=1e-4)


def test_manifest_checks_the_collaborative_file_and_old_manifests_still_read(model: Model, tmp_path: Path) -> None:
    old = Path(shutil.copytree(model.version, tmp_path / "old"))
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    del manifest["collaborative_sha256"]  # as written before the vectors were exported
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    (old / COLLABORATIVE_FILE).unlink()
    assert ModelManifest.read(old).collaborative_sha256 == ""
    assert load_collaborative(old) is None

    broken = Path(shutil.copytree(model.version, tmp_path / "broken"))
    (broken / COLLABORATIVE_FILE).write_bytes(b"not an npz")
    with pytest.raises(ModelArtifactError, match="checksum"):
        ModelManifest.read(broken)

    loaded = load_collaborative(model.version)
    assert loaded is not None and loaded.dim == DIM and loaded.version.startswith(model.version.name)
    longest = max(np.linalg.norm(v) for v in [*loaded.items.values(), *loaded.bundles.values()])
    assert longest == pytest.approx(1.0, abs=1e-6)  # scaled to at most 1, inner products in the model's order


# -- the service -----------------------------------------------------------------------------


async def add_catalogue(server: CandidateServer, dataset: Dataset) -> None:
    items = [
        common_pb2.Item(item_id=i.item_id, title=i.title, category=i.category, brand=i.brand, price=i.price or 1.0)
        for i in dataset.items.values()
    ]
    await server.stub.UpsertItems(pb.UpsertItemsRequest(items=items))
    bundles = [common_pb2.Bundle(bundle_id=b.bundle_id, item_ids=b.item_ids) for b in dataset.bundles.values()]
    for start in range(0, len(bundles), 500):
        await server.stub.UpsertBundles(pb.UpsertBundlesRequest(bundles=bundles[start : start + 500]))


@contextlib.asynccontextmanager
async def shop_with_models(tmp_path: Path, encoder_dir: str, model: Model, models_dir: Path, **overrides: object):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'catalogue.sqlite3'}"
    async with running_candidate(url, encoder_dir, models_dir=str(models_dir), **overrides) as server:
        await add_catalogue(server, model.dataset)
        yield server


async def two_tower(server: CandidateServer, user: np.ndarray, k: int = 10) -> pb.RetrieveResponse:
    request = pb.RetrieveRequest(user_vector=user.tolist(), item_limit=k, bundle_limit=k, sources=[TWO_TOWER])
    return await server.stub.Retrieve(request)


def catalogue_bundle_vectors(model: Model) -> tuple[list[str], np.ndarray]:
    """What two-tower retrieval should see for each catalogue bundle: the model's vector of the
    bundle when it knows it, else the mean of its members' (zeros for members it does not know);
    a bundle of which the model knows nothing is left out."""
    vectors = model.vectors
    items = dict(zip(vectors.item_ids, vectors.items, strict=True))
    known = dict(zip(vectors.bundle_ids, vectors.bundles, strict=True))
    ids, rows = [], []
    for bundle in model.dataset.bundles.values():
        members = [items.get(m, np.zeros(DIM, np.float32)) for m in bundle.item_ids]
        vector = known.get(bundle.bundle_id, np.mean(members, axis=0))
        if np.any(vector):
            ids.append(bundle.bundle_id)
            rows.append(vector)
    return ids, np.stack(rows)


def assert_two_tower(reply: pb.RetrieveResponse, model: Model, user: np.ndarray, k: int = 10) -> None:
    assert [c.target.id for c in reply.items] == top(model.vectors.item_ids, model.vectors.items, user, k)
    assert [c.target.id for c in reply.bundles] == top(*catalogue_bundle_vectors(model), user, k)
    assert all(list(c.sources) == [TWO_TOWER] for c in [*reply.items, *reply.bundles])


async def test_the_rankers_user_vector_retrieves_what_the_model_scores_highest(
    tmp_path: Path, encoder_dir: str, model: Model
) -> None:
    users = onnx_user_vectors(model)
    publish(model.version, tmp_path / "models")
    async with shop_with_models(tmp_path, encoder_dir, model, tmp_path / "models") as server:
        for user in users:
            assert_two_tower(await two_tower(server, user), model, user)
        # with every source, the two-tower candidates are merged with the others and tagged
        first = model.dataset.events[0].target_id
        merged = await server.stub.Retrieve(
            pb.RetrieveRequest(recent=recent(first), user_vector=users[0].tolist(), item_limit=30)
        )
        assert any(TWO_TOWER in c.sources for c in merged.items)
        assert any(VECTOR in c.sources for c in merged.items)
        # a user vector of the fused dimension (text + collaborative) is still a query; others are not
        text_dim = TextEncoder(encoder_dir).dimension
        fused = np.random.default_rng(0).standard_normal(text_dim + DIM).astype(np.float32)
        got = await server.stub.Retrieve(pb.RetrieveRequest(user_vector=fused.tolist(), item_limit=5))
        assert len(got.items) == 5
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await server.stub.Retrieve(pb.RetrieveRequest(user_vector=[0.5] * text_dim))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith("user_vector")

        # cold start: a brand-new item with only a title, unknown to the model, is found through its text
        some = next(iter(model.dataset.items.values()))
        new_item = common_pb2.Item(item_id="brand-new", title=some.title + " (new edition)")
        await server.stub.UpsertItems(pb.UpsertItemsRequest(items=[new_item]))
        found = await server.stub.Retrieve(pb.RetrieveRequest(recent=recent(some.item_id), item_limit=20))
        assert "brand-new" in {c.target.id for c in found.items}
        assert "brand-new" not in {c.target.id for c in (await two_tower(server, users[0], 200)).items}


async def test_a_corrupted_collaborative_file_leaves_the_service_serving_on_text(
    tmp_path: Path, encoder_dir: str, model: Model
) -> None:
    version = publish(model.version, tmp_path / "models")
    (version / COLLABORATIVE_FILE).write_bytes(b"\0" * 100)
    async with shop_with_models(tmp_path, encoder_dir, model, tmp_path / "models") as server:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await two_tower(server, onnx_user_vectors(model)[0])
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith("user_vector")
        some = next(iter(model.dataset.items))
        reply = await server.stub.Retrieve(pb.RetrieveRequest(recent=recent(some), item_limit=10, sources=[VECTOR]))
        assert len(reply.items) == 10


async def test_a_new_model_version_is_picked_up_while_retrieval_goes_on(
    tmp_path: Path, encoder_dir: str, model: Model
) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    user = onnx_user_vectors(model)[0]
    some = next(iter(model.dataset.items))
    async with shop_with_models(tmp_path, encoder_dir, model, models_dir, model_poll_seconds=0.1) as server:
        with pytest.raises(grpc.aio.AioRpcError):
            await two_tower(server, user)  # no model yet: a 32-dimension user vector is not understood
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def keep_retrieving() -> int:
            calls = 0
            while not stop.is_set():
                try:
                    reply = await server.stub.Retrieve(pb.RetrieveRequest(recent=recent(some), item_limit=10))
                    assert len(reply.items) == 10
                except BaseException as error:
                    failures.append(error)
                calls += 1
            return calls

        clients = [asyncio.create_task(keep_retrieving()) for _ in range(4)]
        publish(model.version, models_dir)
        replies = []

        async def picked_up() -> bool:  # the new model version: two-tower search answers
            with contextlib.suppress(grpc.aio.AioRpcError):
                replies.append(await two_tower(server, user))
            return bool(replies)

        await eventually(picked_up, seconds=30, every=0.1)
        reply = replies[0]
        stop.set()
        calls = await asyncio.gather(*clients)
        assert_two_tower(reply, model, user)
        assert not failures and sum(calls) > 0


async def test_a_saved_index_is_rebuilt_for_another_model_version(
    tmp_path: Path, encoder_dir: str, model: Model
) -> None:
    collaborative = load_collaborative(model.version)
    assert collaborative is not None
    other = dataclasses.replace(collaborative, version="another-version")
    encoder = TextEncoder(encoder_dir)
    url, saved = f"sqlite:///{tmp_path / 'c.sqlite3'}", tmp_path / "index"
    restored = []
    for vectors in (collaborative, collaborative, other, None):
        store = await CatalogueStore.open(url, migrate=True)
        index = CatalogueIndex(encoder.dimension, collaborative=vectors)
        service = CandidateService(store, index, encoder, saved)
        await service.load()
        if not restored:
            await service.upsert_items([Item(i.item_id, i.title) for i in list(model.dataset.items.values())[:20]])
        restored.append(service.restored)
        assert index.item_vectors.dim == encoder.dimension + (DIM if vectors else 0)
        await service.close()
    assert restored == [False, True, False, False]


async def test_catalogue_writes_during_a_model_swap_reach_the_new_index(
    tmp_path: Path, encoder_dir: str, model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = TextEncoder(encoder_dir)
    url, saved, models_dir = f"sqlite:///{tmp_path / 'c.sqlite3'}", tmp_path / "index", tmp_path / "models"
    service = CandidateService(
        await CatalogueStore.open(url, migrate=True), CatalogueIndex(encoder.dimension), encoder, saved
    )
    await service.load()
    catalogue = list(model.dataset.items.values())[:30]
    await service.upsert_items([Item(i.item_id, i.title) for i in catalogue])
    watcher = ModelWatcher(models_dir)
    assert not await service.check_model(watcher)  # nothing to follow yet
    publish(model.version, models_dir)

    loop, building, release = asyncio.get_running_loop(), asyncio.Event(), threading.Event()
    warm = CatalogueIndex.warm

    def slow_warm(index: CatalogueIndex) -> None:  # injected: holds the build open while writes happen
        loop.call_soon_threadsafe(building.set)
        release.wait(30)
        warm(index)

    monkeypatch.setattr(CatalogueIndex, "warm", slow_warm)
    swap = asyncio.create_task(service.check_model(watcher))
    await building.wait()
    old = service.index
    await service.upsert_items([Item("late", "A late arrival")])
    await service.delete_items([catalogue[0].item_id])
    assert service.index is old and "late" in old.items  # the current index took the writes meanwhile
    release.set()
    assert await swap

    new = service.index
    assert new is not old and new.collaborative is not None and new.item_vectors.dim == encoder.dimension + DIM
    assert "late" in new.items and catalogue[0].item_id not in new.item_vectors.slot_of
    assert not np.any(new.item_vectors.vector("late")[encoder.dimension :])  # unknown to the model: text only
    known = next(i.item_id for i in catalogue[1:] if i.item_id in new.collaborative.items)
    assert np.any(new.item_vectors.vector(known)[encoder.dimension :])
    await service.close()

    again = CandidateService(
        await CatalogueStore.open(url, migrate=False),
        CatalogueIndex(encoder.dimension, collaborative=new.collaborative),
        encoder,
        saved,
    )
    await again.load()
    assert again.restored, "the index saved after the swap carries the new model's stamp"
    await again.close()
