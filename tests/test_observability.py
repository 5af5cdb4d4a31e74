"""Observability: the metrics each service exposes move with real calls, and tracing follows a
Recommend call through the gateway and the three real services (in-process, port 0) with one
trace id and one request id; off by default, it costs no OpenTelemetry import."""

from __future__ import annotations

import gc
import io
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import REGISTRY

from bundlerec.runtime import tracing
from bundlerec.runtime.logs import JsonFormatter
from bundlerec.runtime.server import ServiceParts, start_server
from bundlerec.runtime.settings import ServiceSettings
from bundlerec.v1 import common_pb2, gateway_pb2, profile_pb2, profile_pb2_grpc
from tests.harness.factories import event
from tests.harness.servers import running_profile

SERVICES = ("gateway", "profile", "candidate", "ranker")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def otel_exporter():  # type: ignore[no-untyped-def]
    pytest.importorskip("opentelemetry.sdk", reason="tracing needs the tracing extra (opentelemetry)")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    return InMemorySpanExporter()


@pytest.fixture
def exporter():  # type: ignore[no-untyped-def]
    """Tracing on for every service of this process, spans kept in memory; off again after."""
    spans = otel_exporter()
    for service in SERVICES:
        tracing.configure_tracing(service, ServiceSettings(), exporter=spans)
    yield spans
    tracing.shutdown_tracing()


# -- tracing off -----------------------------------------------------------------------------------


def test_tracing_is_off_by_default_and_imports_no_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from bundlerec.runtime import tracing\n"
        "from bundlerec.runtime.settings import ServiceSettings\n"
        "import bundlerec.gateway.server, bundlerec.runtime.server, bundlerec.runtime.logs\n"
        "assert tracing.server_interceptors('gateway', ServiceSettings()) == []\n"
        "assert tracing.client_interceptors('gateway', ServiceSettings()) is None\n"
        "assert tracing.log_fields() == {}\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_with_an_endpoint_spans_are_exported_over_otlp_to_the_collector() -> None:
    otel_exporter()
    from concurrent import futures

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # type: ignore[no-untyped-def]
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    try:
        settings = ServiceSettings(tracing_endpoint=f"http://127.0.0.1:{port}")
        provider = tracing.configure_tracing("otlp-check", settings)
        assert tracing.configure_tracing("otlp-check", settings) is provider  # one per service
        with provider.get_tracer("test").start_as_current_span("work"):
            pass
        assert provider.force_flush(5_000)
    finally:
        tracing.shutdown_tracing()
        collector.stop(None)
    (resource,) = [r for request in received for r in request.resource_spans]
    attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert attributes["service.name"] == "bundlerec-otlp-check"
    assert [s.name for scope in resource.scope_spans for s in scope.spans] == ["work"]


# -- profile: ingestion and database latency (SQLite; no model needed) --------------------------------


async def test_profile_counts_ingested_events_by_outcome_and_times_the_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def events(outcome: str) -> float:
        return sample("bundlerec_profile_events_total", outcome=outcome)

    def db_calls(operation: str) -> float:
        return sample("bundlerec_profile_db_duration_seconds_count", operation=operation, outcome="ok")

    before = {o: events(o) for o in ("recorded", "duplicate", "rejected")}
    reads_before, writes_before = db_calls("profile_snapshot"), db_calls("record")
    async with running_profile(f"sqlite:///{tmp_path / 'profile.sqlite3'}") as server:
        user = f"user-{uuid.uuid4().hex[:8]}"
        batch = [event(user, f"item-{n}") for n in range(3)]
        await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=batch))
        await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=batch))  # a retry
        bad = [event(user), common_pb2.Event(event_id="e1", user_id=user, type=1)]  # no target
        with pytest.raises(grpc.aio.AioRpcError):
            await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=bad))
        await server.stub.GetProfile(profile_pb2.GetProfileRequest(user_id=user))
    assert events("recorded") - before["recorded"] == 3
    assert events("duplicate") - before["duplicate"] == 3
    assert events("rejected") - before["rejected"] == 2
    assert db_calls("record") - writes_before == 2  # the refused batch never reached the database
    assert db_calls("profile_snapshot") - reads_before == 1
    assert sample("bundlerec_profile_db_duration_seconds_sum", operation="profile_snapshot", outcome="ok") > 0


# -- request ids in log lines ----------------------------------------------------------------------


class _LoggingProfile(profile_pb2_grpc.ProfileServiceServicer):
    async def GetProfile(self, request, context):  # type: ignore[no-untyped-def]
        logging.getLogger("bundlerec.test").info("profile read")
        return profile_pb2.GetProfileResponse()


async def test_log_lines_of_a_traced_call_carry_its_request_and_trace_ids(exporter) -> None:  # type: ignore[no-untyped-def]
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("bundlerec.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    parts = ServiceParts(
        name="profile",
        register=lambda server: profile_pb2_grpc.add_ProfileServiceServicer_to_server(_LoggingProfile(), server),
        service_names=["bundlerec.v1.ProfileService"],
    )
    settings = ServiceSettings(host="127.0.0.1", port=0, metrics_port=0, health_interval_seconds=0.2)
    running = await start_server(settings, parts)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            request = profile_pb2.GetProfileRequest(user_id="u")
            await stub.GetProfile(request, metadata=[("x-request-id", "caller-chosen-1")])
            await stub.GetProfile(request, metadata=[("x-request-id", "not/valid here")])  # replaced, not trusted
    finally:
        await running.stop()
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in lines.getvalue().splitlines())
    (span_first,) = [
        s for s in exporter.get_finished_spans() if s.attributes.get("bundlerec.request_id") == first.get("request_id")
    ]
    assert first["request_id"] == "caller-chosen-1" and first["msg"] == "profile read"
    assert first["trace_id"] == format(span_first.context.trace_id, "032x")
    assert second["request_id"] not in ("", "caller-chosen-1") and len(second["request_id"]) == 32  # made up here
    assert second["trace_id"] != first["trace_id"]


class _FailingProfile(profile_pb2_grpc.ProfileServiceServicer):
    async def GetProfile(self, request, context):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"query failed for user_id = {request.user_id!r}")  # what a driver error might say


async def test_an_unexpected_error_reaches_no_span_with_its_message(exporter) -> None:  # type: ignore[no-untyped-def]
    parts = ServiceParts(
        name="profile",
        register=lambda server: profile_pb2_grpc.add_ProfileServiceServicer_to_server(_FailingProfile(), server),
        service_names=["bundlerec.v1.ProfileService"],
    )
    running = await start_server(ServiceSettings(port=0, metrics_port=0), parts)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await profile_pb2_grpc.ProfileServiceStub(channel).GetProfile(
                    profile_pb2.GetProfileRequest(user_id="alice-secret-42"), timeout=5
                )
    finally:
        await running.stop()
    assert failed.value.code() == grpc.StatusCode.INTERNAL and "alice" not in (failed.value.details() or "")
    spans = [s for s in exporter.get_finished_spans() if s.name.endswith("GetProfile")]
    assert spans
    recorded = repr([(s.attributes, [(e.name, e.attributes) for e in s.events], s.status) for s in spans])
    assert "alice-secret-42" not in recorded


# -- the four services together ---------------------------------------------------------------------


@pytest.fixture
async def traced_suite(suite, encoder_dir, exporter) -> AsyncIterator:  # type: ignore[no-untyped-def]
    from tests.harness.shops import running_suite

    async with running_suite(suite, encoder_dir) as running:
        yield running


def _by_service(spans):  # type: ignore[no-untyped-def]
    found: dict[str, list] = {}
    for span in spans:
        found.setdefault(span.resource.attributes["service.name"].removeprefix("bundlerec-"), []).append(span)
    return found


async def test_a_recommend_call_is_one_trace_through_the_four_services_with_one_request_id(
    traced_suite, suite, exporter
) -> None:  # type: ignore[no-untyped-def]
    from opentelemetry.trace import SpanKind

    from tests.harness.shops import buyer

    response = await traced_suite.stub.Recommend(gateway_pb2.RecommendRequest(user_id=buyer(suite), page_size=5))
    assert response.model_version and not response.degraded  # the ranker was called and answered
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "/bundlerec.v1.RecommendationService/Recommend"]
    assert root.resource.attributes["service.name"] == "bundlerec-gateway" and root.kind == SpanKind.SERVER
    assert root.attributes["bundlerec.recommendation_id"] == response.recommendation_id
    assert root.attributes["bundlerec.request_id"] == response.recommendation_id  # the caller sent none
    trace = [s for s in spans if s.context.trace_id == root.context.trace_id]
    services = _by_service(trace)
    assert set(services) == set(SERVICES)
    clients = {s.context.span_id: s for s in services["gateway"] if s.kind == SpanKind.CLIENT}
    downstream = [s for name in ("profile", "candidate", "ranker") for s in services[name]]
    assert {s.name for s in downstream} >= {
        "/bundlerec.v1.ProfileService/GetProfile",
        "/bundlerec.v1.CandidateService/Retrieve",
        "/bundlerec.v1.RankerService/Rank",
    }
    for span in downstream:
        assert span.kind == SpanKind.SERVER and span.parent.span_id in clients  # a child of the gateway's call
        assert span.attributes["bundlerec.request_id"] == response.recommendation_id
        assert clients[span.parent.span_id].parent.span_id == root.context.span_id
        assert clients[span.parent.span_id].attributes["bundlerec.request_id"] == response.recommendation_id
    assert not any("Health" in s.name for s in spans)  # probes are not traced

    exporter.clear()
    again = await traced_suite.stub.Recommend(
        gateway_pb2.RecommendRequest(session_id="visitor-7", page_size=5), metadata=[("x-request-id", "edge-42")]
    )
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "/bundlerec.v1.RecommendationService/Recommend"]
    assert root.attributes["bundlerec.recommendation_id"] == again.recommendation_id != "edge-42"
    downstream = [s for s in spans if not s.resource.attributes["service.name"].endswith("gateway")]
    assert downstream and {s.attributes["bundlerec.request_id"] for s in downstream} == {"edge-42"}
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}


async def test_a_recommend_call_moves_the_metrics_of_every_service(traced_suite, suite) -> None:  # type: ignore[no-untyped-def]
    from tests.harness.shops import buyer

    rpc = "bundlerec_rpc_duration_seconds_count"
    watched = {
        "gateway": lambda: sample(rpc, service="RecommendationService", method="Recommend"),
        "gateway_ok": lambda: sample(
            "bundlerec_rpc_requests_total", service="RecommendationService", method="Recommend", code="OK"
        ),
        "profile": lambda: sample(rpc, service="ProfileService", method="GetProfile"),
        "retrieve": lambda: sample(rpc, service="CandidateService", method="Retrieve"),
        "rank": lambda: sample(rpc, service="RankerService", method="Rank"),
        "queue": lambda: sample("bundlerec_ranker_queue_wait_seconds_count"),
        "batches": lambda: sample("bundlerec_ranker_batch_size_count"),
        "stage": lambda: sample("bundlerec_gateway_stage_duration_seconds_count", stage="ranker"),
        "pages": lambda: sample("bundlerec_gateway_pages_total", variant="default", personalized="true"),
        "page_size": lambda: sample("bundlerec_gateway_page_size_count"),
        "db": lambda: sample("bundlerec_profile_db_duration_seconds_count", operation="profile_snapshot", outcome="ok"),
        "hits": lambda: sum(
            sample("bundlerec_candidate_source_hits_total", kind=kind, source=source)
            for kind in ("item", "bundle")
            for source in ("vector", "co_occurrence", "popularity", "anchor", "bundle_membership", "two_tower")
        ),
    }
    before = {name: read() for name, read in watched.items()}
    before_degraded = sample("bundlerec_gateway_degraded_pages_total", variant="default")
    response = await traced_suite.stub.Recommend(gateway_pb2.RecommendRequest(user_id=buyer(suite), page_size=5))
    assert response.personalized and response.model_version
    moved = {name: read() - before[name] for name, read in watched.items()}
    assert moved.pop("hits") >= 1
    assert moved.pop("retrieve") >= 1  # (the gateway's popular fallback may refresh meanwhile)
    assert moved == dict.fromkeys(moved, 1.0)
    assert sample("bundlerec_candidate_index_size", kind="item") == len(suite.items)
    assert sample("bundlerec_candidate_index_size", kind="bundle") > 0
    assert sample("bundlerec_gateway_degraded_pages_total", variant="default") == before_degraded
    served = {"version": response.model_version, "execution_provider": "CPUExecutionProvider", "quantized": "false"}
    assert sample("bundlerec_ranker_model_info", **served) == 1.0


async def test_a_degraded_page_is_counted_by_stage_reason_and_variant(suite, encoder_dir) -> None:  # type: ignore[no-untyped-def]
    from tests.harness.shops import buyer, running_suite

    variants = [{"name": "broken", "share": 1.0, "model_version": "no-such-version"}]
    reason = {"stage": "ranker", "reason": "rejected_not_found"}
    before = (
        sample("bundlerec_gateway_degraded_total", **reason),
        sample("bundlerec_gateway_degraded_pages_total", variant="broken"),
    )
    async with running_suite(suite, encoder_dir, experiment_variants=variants) as running:
        response = await running.stub.Recommend(gateway_pb2.RecommendRequest(user_id=buyer(suite), page_size=5))
    assert [(d.stage, d.reason) for d in response.degraded] == [(gateway_pb2.STAGE_RANKER, "rejected_not_found")]
    after = (
        sample("bundlerec_gateway_degraded_total", **reason),
        sample("bundlerec_gateway_degraded_pages_total", variant="broken"),
    )
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 1.0)


def test_the_documented_alert_rules_pass_promtool(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """docs/observability.md's example rules, as promtool (Prometheus 2.42, Debian's) reads them."""
    import os
    import re
    import shutil
    from pathlib import Path

    promtool = os.environ.get("BUNDLEREC_PROMTOOL") or shutil.which("promtool") or ""
    if not Path(promtool).is_file():
        why = "no promtool (BUNDLEREC_PROMTOOL; .ci/run unpacks Debian's prometheus package)"
        if os.environ.get("CI") == "true" or os.environ.get("BUNDLEREC_REQUIRE_PROMTOOL") == "1":
            pytest.fail(f"{why}: required (CI, BUNDLEREC_REQUIRE_PROMTOOL=1)")
        pytest.skip(why)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "observability.md").read_text()
    (rules_yaml,) = re.findall(r"## Alerts\n.*?```yaml\n(.*?)```", doc, flags=re.S)
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_yaml)
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 12 rules found" in checked.stdout


def test_garbage_collections_are_timed_by_generation() -> None:
    from bundlerec.runtime.metrics import time_garbage_collections

    time_garbage_collections()
    time_garbage_collections()  # once per process, however often asked
    before = sample("bundlerec_gc_pause_seconds_count", generation="2")
    gc.collect(2)
    assert sample("bundlerec_gc_pause_seconds_count", generation="2") == before + 1
    assert sample("bundlerec_gc_pause_seconds_sum", generation="2") > 0
