"""The ranker service against real servers on port 0, real channels and real ONNX models trained
(one epoch, on the tiny demo shop) once per test session.

Every score is checked against onnxruntime run on that request alone, with arrays built here from
the model artifact contract (bundlerec.ranking), not by the service's own encoder.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import functools
import random
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY

from bundlerec.ranking.artifact import INT8_FILE, ONNX_FILE, ModelManifest
from bundlerec.ranking.features import EVENT_TYPE_INDEX, PAD, UNKNOWN, Step, encode_candidates, encode_sequence
from bundlerec.ranking.vocabulary import Vocabulary
from bundlerec.v1 import candidate_pb2, common_pb2, ranker_pb2, ranker_pb2_grpc
from tests.harness.models import NEW_ITEMS, TEXT_DIM, Artifacts, models_with, publish
from tests.harness.processes import free_port, start_service, wait_serving
from tests.harness.servers import RankerServer, eventually, field_of, running_candidate, running_ranker

ITEM, BUNDLE = common_pb2.TARGET_TYPE_ITEM, common_pb2.TARGET_TYPE_BUNDLE
EVENT_NAMES = {v: k for k, v in EVENT_TYPE_INDEX.items()}  # proto EventType values equal the model's indices
START = 1_709_251_200


# -- requests and the reference -------------------------------------------------------------


def step(
    kind: int, target: str, event: int = common_pb2.EVENT_TYPE_VIEW, at: int | None = None
) -> ranker_pb2.SequenceStep:
    pb = ranker_pb2.SequenceStep(target=common_pb2.TargetRef(type=kind, id=target), type=event)
    if at is not None:
        pb.timestamp.seconds = at
    return pb


def candidate(*items: str, bundle: str = "") -> ranker_pb2.BundleCandidate:
    return ranker_pb2.BundleCandidate(bundle_id=bundle, item_ids=items)


OK_CANDIDATE = candidate("x")


def random_request(a: Artifacts, seed: int, steps: int, candidates: int) -> ranker_pb2.RankRequest:
    """Known and unknown items and bundles, all event types, timestamps set or not."""
    rng = random.Random(seed)
    sequence = []
    for n in range(steps):
        kind = BUNDLE if rng.random() < 0.2 else ITEM
        if rng.random() < 0.2:
            target = rng.choice(["ghost", "ghost-bundle", *NEW_ITEMS.keys()])  # unknown to the model
        else:
            target = rng.choice(a.bundles if kind == BUNDLE else a.items)
        at = START + 600 * n if rng.random() < 0.9 else None
        sequence.append(step(kind, target, rng.randint(1, 6), at))
    cands = []
    for _ in range(candidates):
        members = rng.sample([*a.items, "ghost-1", "ghost-2", *NEW_ITEMS.keys()], rng.randint(1, 5))
        bundle = rng.choice(["", "", rng.choice(a.bundles), "unknown-bundle"])
        cands.append(candidate(*members, bundle=bundle))
    return ranker_pb2.RankRequest(sequence=sequence, candidates=cands, return_user_vector=True)


@functools.cache
def session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def reference(
    directory: Path,
    request: ranker_pb2.RankRequest,
    text: Mapping[str, np.ndarray] | None = None,
    onnx: str = ONNX_FILE,
) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime on this request alone (batch of one), arrays built from the contract's rules."""
    manifest, vocabulary = ModelManifest.read(directory), Vocabulary.load(directory)
    rows, extra = manifest.model["num_item_rows"], {}
    text = text if manifest.text_dim else {}

    def item(item_id: str) -> int:
        if vocabulary.has_item(item_id):
            return vocabulary.item(item_id)
        if text and item_id in text:
            return rows + extra.setdefault(item_id, len(extra))
        return UNKNOWN

    steps = []
    for s in request.sequence[-200:]:
        at = s.timestamp.seconds if s.HasField("timestamp") else None
        kind = EVENT_TYPE_INDEX[EVENT_NAMES[s.type]]
        if s.target.type == BUNDLE:
            if vocabulary.bundle(s.target.id) > UNKNOWN:
                steps.append(Step(PAD, vocabulary.bundle(s.target.id), kind, at))
        else:
            steps.append(Step(item(s.target.id), PAD, kind, at))
    steps = steps[-manifest.max_sequence :]
    sequence = encode_sequence(steps, max(1, len(steps)), clock=manifest.clock)
    pairs = [(vocabulary.bundle(c.bundle_id), [item(i) for i in c.item_ids]) for c in request.candidates]
    bundles, items = encode_candidates([(0 if b == UNKNOWN else b, m) for b, m in pairs], manifest.max_members)
    run = session(str(directory / onnx))
    feeds = {"sequence": sequence[None], "cand_items": items[None], "cand_bundles": bundles[None]}
    if "extra_text" in {i.name for i in run.get_inputs()}:
        by_row = sorted(extra, key=extra.__getitem__)
        feeds["extra_text"] = np.stack([text[i] for i in by_row]) if by_row else np.zeros((1, TEXT_DIM), np.float32)
    scores, user = run.run(["scores", "user_vector"], feeds)
    return scores[0], user[0]


def assert_matches(response: ranker_pb2.RankResponse, expected: tuple[np.ndarray, np.ndarray]) -> None:
    assert len(response.scores) == len(expected[0])
    np.testing.assert_allclose(np.array(response.scores), expected[0], atol=1e-4, rtol=0)
    if response.user_vector:
        np.testing.assert_allclose(np.array(response.user_vector), expected[1], atol=1e-4, rtol=0)


@dataclass
class Catalogue:
    """A real candidate service whose catalogue holds NEW_ITEMS, and their text vectors as it answers them."""

    address: str
    text: dict[str, np.ndarray]


@pytest.fixture(scope="module")
async def catalogue(tmp_path_factory: pytest.TempPathFactory, encoder_dir: str) -> AsyncIterator[Catalogue]:
    url = f"sqlite:///{tmp_path_factory.mktemp('catalogue') / 'catalogue.sqlite3'}"
    async with running_candidate(url, encoder_dir) as server:
        items = [common_pb2.Item(item_id=i, title=title, category="Home > Decor") for i, title in NEW_ITEMS.items()]
        await server.stub.UpsertItems(candidate_pb2.UpsertItemsRequest(items=items))
        reply = await server.stub.GetTextVectors(candidate_pb2.GetTextVectorsRequest(item_ids=list(NEW_ITEMS)))
        text = {pb.item_id: np.asarray(pb.vector, np.float32) for pb in reply.vectors}
        assert set(text) == set(NEW_ITEMS) and all(v.shape == (TEXT_DIM,) for v in text.values())
        yield Catalogue(server.address, text)


@pytest.fixture(scope="module")
async def ranker(
    artifacts: Artifacts, catalogue: Catalogue, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RankerServer]:
    """Serves the newest (text) version, with the plain one on disk, asking the candidate service
    for the text of items the models never saw."""
    models = models_with(tmp_path_factory.mktemp("served") / "models", artifacts.plain, artifacts.text)
    async with running_ranker(models, candidate_address=catalogue.address) as server:
        yield server


# -- scoring ----------------------------------------------------------------------------------


async def test_scores_equal_onnxruntime_on_the_request_alone(
    ranker: RankerServer, artifacts: Artifacts, catalogue: Catalogue
) -> None:
    requests = [random_request(artifacts, seed, steps, count) for seed, (steps, count) in
                enumerate([(0, 1), (1, 3), (7, 40), (50, 200), (120, 17)])]  # fmt: skip
    for request in requests:
        response = await ranker.stub.Rank(request)
        assert response.model_version == artifacts.text.name
        assert len(response.user_vector) == 32
        assert_matches(response, reference(artifacts.text, request, catalogue.text))
    request = requests[3]
    request.model_version = artifacts.plain.name  # an older version, loaded on first use
    response = await ranker.stub.Rank(request)
    assert response.model_version == artifacts.plain.name
    assert_matches(response, reference(artifacts.plain, request))


async def test_requests_of_different_shapes_batched_together_score_as_alone(
    artifacts: Artifacts, catalogue: Catalogue, tmp_path: Path
) -> None:
    """Different sequence lengths, candidate counts, set sizes and extra text rows in one run; every
    third request asks for the older version, which must run separately, on its own model."""
    requests = [random_request(artifacts, 100 + n, steps=n * 9 % 60, candidates=1 + n * 37 % 150) for n in range(12)]
    for request in requests[::3]:
        request.model_version = artifacts.plain.name
    models = models_with(tmp_path / "models", artifacts.plain, artifacts.text)
    async with running_ranker(models, max_wait_ms=300, max_batch=16, candidate_address=catalogue.address) as server:
        await server.stub.Rank(ranker_pb2.RankRequest(candidates=[OK_CANDIDATE], model_version=artifacts.plain.name))
        batches_before = REGISTRY.get_sample_value("bundlerec_ranker_batch_size_count") or 0
        responses = await asyncio.gather(*(server.stub.Rank(r) for r in requests))
        batches = (REGISTRY.get_sample_value("bundlerec_ranker_batch_size_count") or 0) - batches_before
    for request, response in zip(requests, responses, strict=True):
        if request.model_version:
            assert response.model_version == artifacts.plain.name
            assert_matches(response, reference(artifacts.plain, request))
        else:
            assert response.model_version == artifacts.text.name
            assert_matches(response, reference(artifacts.text, request, catalogue.text))
    assert batches <= 4  # they really were fused: 12 requests, two versions


async def test_sequence_beyond_the_limit_keeps_the_newest_steps(ranker: RankerServer, artifacts: Artifacts) -> None:
    items = artifacts.items
    long = ranker_pb2.RankRequest(
        sequence=[step(ITEM, items[n % len(items)], at=START + n) for n in range(260)],
        candidates=[candidate(items[0]), candidate(items[1], items[2])],
    )
    newest = ranker_pb2.RankRequest(sequence=long.sequence[-50:], candidates=long.candidates)
    assert list((await ranker.stub.Rank(long)).scores) == list((await ranker.stub.Rank(newest)).scores)


async def test_unknown_ids_are_scored_and_new_items_use_their_catalogue_text(
    ranker: RankerServer, artifacts: Artifacts, catalogue: Catalogue, tmp_path: Path
) -> None:
    request = ranker_pb2.RankRequest(
        sequence=[step(ITEM, "new-lamp", at=START), step(BUNDLE, "no-such-bundle", at=START + 1)],
        candidates=[candidate("new-mug"), candidate("never-seen"), candidate(artifacts.items[3], bundle="no-such")],
    )
    with_text = await ranker.stub.Rank(request)
    assert_matches(with_text, reference(artifacts.text, request, catalogue.text))
    without_text = reference(artifacts.text, request)
    # the mug's text changed its score, by more than the tolerance scores are compared at (1e-4)
    assert abs(with_text.scores[0] - without_text[0][0]) > 3e-4
    # a candidate service that does not answer: scored without text rather than failing
    nobody = f"127.0.0.1:{free_port()}"
    async with running_ranker(models_with(tmp_path / "m", artifacts.text), candidate_address=nobody) as server:
        assert_matches(await server.stub.Rank(request), without_text)


async def test_int8_model_is_served_when_asked(artifacts: Artifacts, tmp_path: Path) -> None:
    request = random_request(artifacts, 7, steps=50, candidates=200)
    async with running_ranker(models_with(tmp_path, artifacts.plain), use_int8=True) as server:
        assert_matches(await server.stub.Rank(request), reference(artifacts.plain, request, onnx=INT8_FILE))


async def test_a_non_finite_score_is_refused(artifacts: Artifacts, tmp_path: Path) -> None:
    async with running_ranker(models_with(tmp_path, artifacts.poisoned)) as server:
        fine = await server.stub.Rank(ranker_pb2.RankRequest(candidates=[candidate(artifacts.items[0])]))
        assert all(np.isfinite(fine.scores))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.stub.Rank(
                ranker_pb2.RankRequest(candidates=[candidate(artifacts.items[0], bundle=artifacts.poisoned_bundle)])
            )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "non-finite" in (caught.value.details() or "")


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (ranker_pb2.RankRequest(), "candidates"),
        (ranker_pb2.RankRequest(candidates=[OK_CANDIDATE] * 1001), "candidates"),
        (ranker_pb2.RankRequest(candidates=[OK_CANDIDATE, candidate()]), "candidates[1].item_ids"),
        (ranker_pb2.RankRequest(candidates=[candidate(*(f"i{n}" for n in range(201)))]), "candidates[0].item_ids"),
        (ranker_pb2.RankRequest(candidates=[candidate("a", "")]), "candidates[0].item_ids[1]"),
        (ranker_pb2.RankRequest(candidates=[candidate("a", "x" * 257)]), "candidates[0].item_ids[1]"),
        (ranker_pb2.RankRequest(candidates=[candidate("a", " b")]), "candidates[0].item_ids[1]"),
        (ranker_pb2.RankRequest(candidates=[OK_CANDIDATE, candidate("a", "b", "a")]), "candidates[1].item_ids[2]"),
        (ranker_pb2.RankRequest(candidates=[candidate("a", bundle="b\x00")]), "candidates[0].bundle_id"),
        (ranker_pb2.RankRequest(candidates=[candidate("a", "b\tc")]), "candidates[0].item_ids[1]"),
        (ranker_pb2.RankRequest(candidates=[candidate("a", bundle="b\u2028c")]), "candidates[0].bundle_id"),
        (ranker_pb2.RankRequest(sequence=[step(ITEM, "a\nb")], candidates=[OK_CANDIDATE]), "sequence[0].target.id"),
        (ranker_pb2.RankRequest(sequence=[ranker_pb2.SequenceStep(type=1)], candidates=[OK_CANDIDATE]),
         "sequence[0].target"),
        (ranker_pb2.RankRequest(sequence=[step(ITEM, "a"), step(0, "b")], candidates=[OK_CANDIDATE]),
         "sequence[1].target.type"),
        (ranker_pb2.RankRequest(sequence=[step(ITEM, "")], candidates=[OK_CANDIDATE]), "sequence[0].target.id"),
        (ranker_pb2.RankRequest(sequence=[step(ITEM, "a", event=0)], candidates=[OK_CANDIDATE]), "sequence[0].type"),
        (ranker_pb2.RankRequest(sequence=[step(ITEM, "a")] * 250 + [step(ITEM, "a", event=99)],
                                candidates=[OK_CANDIDATE]), "sequence[250].type"),
        (ranker_pb2.RankRequest(candidates=[OK_CANDIDATE], model_version="v\x011"), "model_version"),
    ],
)  # fmt: skip
async def test_invalid_requests_name_the_field(
    ranker: RankerServer, request_: ranker_pb2.RankRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ranker.stub.Rank(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(caught.value) == field


async def test_a_reload_to_an_invalid_version_name_names_the_field(ranker: RankerServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ranker.stub.ReloadModel(ranker_pb2.ReloadModelRequest(version="../models\x00"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(caught.value) == "version"


async def test_unknown_model_version_is_not_found(ranker: RankerServer) -> None:
    for call in (
        ranker.stub.Rank(ranker_pb2.RankRequest(candidates=[OK_CANDIDATE], model_version="19990101-000000")),
        ranker.stub.ReloadModel(ranker_pb2.ReloadModelRequest(version="19990101-000000")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# -- model info, reload, hot swap -------------------------------------------------------------


async def test_model_info_describes_the_served_model(ranker: RankerServer, artifacts: Artifacts) -> None:
    info = (await ranker.stub.GetModelInfo(ranker_pb2.GetModelInfoRequest())).model
    manifest = ModelManifest.read(artifacts.text)

    assert info.version == artifacts.text.name
    assert info.created_at.ToDatetime(tzinfo=dt.UTC) == dt.datetime.fromisoformat(manifest.created_at)
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.num_items == manifest.model["num_item_rows"] - 2 == len(artifacts.items)
    assert info.max_sequence_length == 50 and info.vector_dimension == 32
    assert dict(info.metrics) == pytest.approx(manifest.metrics)
    assert list(info.available_versions) == [artifacts.plain.name, artifacts.text.name]


async def test_reload_to_a_named_newest_unknown_or_broken_version(artifacts: Artifacts, tmp_path: Path) -> None:
    models = models_with(tmp_path, artifacts.plain, artifacts.text)
    request = random_request(artifacts, 3, steps=20, candidates=30)
    async with running_ranker(models) as server:
        info = (await server.stub.ReloadModel(ranker_pb2.ReloadModelRequest(version=artifacts.plain.name))).model
        assert info.version == artifacts.plain.name == await server.version()
        assert_matches(await server.stub.Rank(request), reference(artifacts.plain, request))

        corrupt = publish(artifacts.text, models, "29990101-000000")  # sorts newest
        with (corrupt / ONNX_FILE).open("ab") as f:
            f.write(b"tampered")
        unreadable = publish(artifacts.text, models, "29990101-000001")
        (unreadable / "manifest.json").write_text("{not json")
        for version in ("29990101-000000", "29990101-000001", ""):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await server.stub.ReloadModel(ranker_pb2.ReloadModelRequest(version=version))
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, version
            assert await server.version() == artifacts.plain.name  # the old model stays
        assert_matches(await server.stub.Rank(request), reference(artifacts.plain, request))

        shutil.rmtree(corrupt)
        shutil.rmtree(unreadable)
        info = (await server.stub.ReloadModel(ranker_pb2.ReloadModelRequest())).model
        assert info.version == artifacts.text.name == await server.version()


async def test_no_call_fails_while_versions_are_swapped_under_load(artifacts: Artifacts, tmp_path: Path) -> None:
    models = models_with(tmp_path, artifacts.plain)
    requests = [random_request(artifacts, 200 + n, steps=30, candidates=50) for n in range(8)]
    served: collections.Counter[str] = collections.Counter()
    failures: list[grpc.StatusCode] = []
    stop = asyncio.Event()
    async with running_ranker(models, poll_seconds=0.1, max_wait_ms=1) as server:

        async def client(n: int) -> None:
            while not stop.is_set():
                try:
                    response = await server.stub.Rank(requests[n % len(requests)], timeout=20)
                    served[response.model_version] += 1
                except grpc.aio.AioRpcError as error:
                    failures.append(error.code())

        clients = [asyncio.create_task(client(n)) for n in range(16)]

        def serving(version: str, more_than: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return served[version] > more_than

            return check

        await eventually(serving(artifacts.plain.name, 0))
        publish(artifacts.text, models)  # the watcher swaps it in
        await eventually(lambda: _is(server, artifacts.text.name))
        await eventually(serving(artifacts.text.name, 0))
        await server.stub.ReloadModel(ranker_pb2.ReloadModelRequest(version=artifacts.plain.name))  # roll back
        await asyncio.sleep(0.5)  # the watcher must not undo the rollback (polls every 0.1 s)
        assert await server.version() == artifacts.plain.name
        await server.stub.ReloadModel(ranker_pb2.ReloadModelRequest())  # and forward again
        await eventually(serving(artifacts.text.name, served[artifacts.text.name]))
        stop.set()
        await asyncio.gather(*clients)
        assert await server.version() == artifacts.text.name

    assert failures == []
    assert served[artifacts.plain.name] > 0 and served[artifacts.text.name] > 0


async def _is(server: RankerServer, version: str) -> bool:
    return await server.version() == version


async def test_not_serving_without_a_model_then_serving_once_one_appears(artifacts: Artifacts, tmp_path: Path) -> None:
    models = tmp_path / "models"
    async with running_ranker(models, poll_seconds=0.1) as server:
        assert "no model version in" in (await server.running.parts.readiness() or "")

        async def not_serving() -> bool:
            return await server.status() == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving)
        for call in (
            server.stub.Rank(ranker_pb2.RankRequest(candidates=[OK_CANDIDATE])),
            server.stub.GetModelInfo(ranker_pb2.GetModelInfoRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

        publish(artifacts.plain, models)
        await eventually(lambda: _serving(server))
        response = await server.stub.Rank(ranker_pb2.RankRequest(candidates=[candidate(artifacts.items[0])]))
        assert response.model_version == artifacts.plain.name


async def test_a_pinned_version_is_served_and_not_followed(artifacts: Artifacts, tmp_path: Path) -> None:
    models = models_with(tmp_path, artifacts.plain, artifacts.text)
    async with running_ranker(models, model_version=artifacts.plain.name, poll_seconds=0.1) as server:
        await asyncio.sleep(0.3)
        assert await server.version() == artifacts.plain.name


async def _serving(server: RankerServer) -> bool:
    return await server.status() == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow
def test_bundlerec_serve_ranker_runs_and_stops_cleanly_on_sigterm(artifacts: Artifacts, tmp_path: Path) -> None:
    port = free_port()
    process = start_service(
        "ranker",
        {
            "BUNDLEREC_RANKER_MODELS_DIR": str(models_with(tmp_path, artifacts.plain)),
            "BUNDLEREC_RANKER_PORT": str(port),
            "BUNDLEREC_RANKER_PROVIDERS": "cpu",
        },
    )
    try:
        wait_serving(f"127.0.0.1:{port}", process)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)
            request = ranker_pb2.RankRequest(candidates=[candidate(artifacts.items[0]), candidate("unknown")])
            assert len(stub.Rank(request, timeout=10).scores) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "Traceback" not in process.stderr.read().decode()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
