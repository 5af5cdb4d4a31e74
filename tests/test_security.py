"""Mutual TLS and per-caller authorization, on real servers with throwaway certificates.

Every RPC of every service (the four real services) is called without credentials, with an unknown
token, by a caller not allowed to call it and by one allowed; the health service stays open for
probes."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bundlerec.candidate.server import build as build_candidate
from bundlerec.candidate.settings import CandidateSettings
from bundlerec.gateway.server import assemble
from bundlerec.gateway.server import build as build_gateway
from bundlerec.gateway.settings import GatewaySettings
from bundlerec.profile.server import build as build_profile
from bundlerec.ranker.server import build as build_ranker
from bundlerec.ranker.settings import RankerSettings
from bundlerec.runtime.auth import AuthPolicy
from bundlerec.runtime.server import RunningServer, start_server
from bundlerec.runtime.tls import ChannelSecurity, open_channel
from bundlerec.v1 import candidate_pb2, gateway_pb2, gateway_pb2_grpc, profile_pb2, profile_pb2_grpc, ranker_pb2
from tests.harness.models import Artifacts
from tests.harness.processes import free_port
from tests.harness.servers import eventually, profile_settings

SERVICES = {
    "profile": (profile_pb2, "ProfileService"),
    "candidate": (candidate_pb2, "CandidateService"),
    "ranker": (ranker_pb2, "RankerService"),
    "gateway": (gateway_pb2, "RecommendationService"),
}
ADMIN_TOKEN = "admin-token-3f9c1e"  # throwaway, made up for this test
READER_TOKEN = "reader-token-77ab20"
UNKNOWN_TOKEN = "nobody-knows-this-token"
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- throwaway certificates ---------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    gateway_cert: Path
    gateway_key: Path
    rogue_cert: Path  # a "gateway" certificate signed by another CA
    rogue_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, issuer_key, issuer_name, *, ca: bool = False, server: bool = False):  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    certificate = builder.sign(issuer_key or key, hashes.SHA256())
    return key, certificate


def _write(directory: Path, stem: str, key, certificate) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _issue("bundlerec test CA", None, None, ca=True)
    ca_path, _ = _write(directory, "ca", ca_key, ca_cert)
    server = _write(directory, "server", *_issue("profile", ca_key, ca_cert.subject, server=True))
    gateway = _write(directory, "gateway", *_issue("gateway", ca_key, ca_cert.subject))
    rogue_ca_key, rogue_ca = _issue("rogue CA", None, None, ca=True)
    rogue = _write(directory, "rogue", *_issue("gateway", rogue_ca_key, rogue_ca.subject))
    return Pki(ca_path, *server, *gateway, *rogue)


# --- every RPC of every service ------------------------------------------------------------------


def _policy(directory: Path, service: str, allowed_for_reader: str) -> Path:
    path = directory / f"{service}-auth.toml"
    path.write_text(
        f"""
[[caller]]
name = "admin"
token_sha256 = ["{sha256(ADMIN_TOKEN)}"]
allow = ["*"]

[[caller]]
name = "reader"
token_sha256 = ["{sha256(READER_TOKEN)}"]
allow = ["{allowed_for_reader}"]
"""
    )
    return path


@pytest.fixture(scope="module")
async def guarded_servers(
    tmp_path_factory: pytest.TempPathFactory, encoder_dir: str, artifacts: Artifacts
) -> AsyncIterator[dict[str, RunningServer]]:
    """The four real services, each with an auth file: an admin may call anything, a reader only the
    service's first RPC."""
    directory = tmp_path_factory.mktemp("auth")

    def policy(service: str) -> str:
        module, name = SERVICES[service]
        descriptor = module.DESCRIPTOR.services_by_name[name]
        return str(_policy(directory, service, f"{descriptor.full_name}/{descriptor.methods[0].name}"))

    nowhere = f"127.0.0.1:{free_port()}"
    settings = {
        "profile": profile_settings(f"sqlite:///{directory / 'profile.sqlite3'}", auth_file=policy("profile")),
        "candidate": CandidateSettings(
            port=0,
            metrics_port=0,
            database_url=f"sqlite:///{directory / 'catalogue.sqlite3'}",
            encoder_dir=encoder_dir,
            index_dir="",
            models_dir="",
            auth_file=policy("candidate"),
        ),
        "ranker": RankerSettings(
            port=0,
            metrics_port=0,
            models_dir=str(artifacts.plain.parent),
            poll_seconds=0,
            providers="cpu",
            auth_file=policy("ranker"),
        ),
        "gateway": GatewaySettings(
            port=0,
            metrics_port=0,
            profile_address=nowhere,
            candidate_address=nowhere,
            ranker_address=nowhere,
            auth_file=policy("gateway"),
        ),
    }
    builders = {
        "profile": build_profile,
        "candidate": build_candidate,
        "ranker": build_ranker,
        "gateway": build_gateway,
    }
    servers: dict[str, RunningServer] = {}
    for service, service_settings in settings.items():
        servers[service] = await start_server(service_settings, await builders[service](service_settings))
    yield servers
    for running in servers.values():
        await running.stop()


def _methods(service: str) -> list[tuple[str, object]]:
    module, name = SERVICES[service]
    descriptor = module.DESCRIPTOR.services_by_name[name]
    return [(f"/{descriptor.full_name}/{m.name}", m) for m in descriptor.methods]


async def _call(address: str, path: str, method, token: str | None) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(
            path, request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString
        )
        try:
            await call(request_class(), metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as error:
            assert ADMIN_TOKEN not in (error.details() or "") and UNKNOWN_TOKEN not in (error.details() or "")
            return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("service", list(SERVICES))
async def test_every_rpc_refuses_anonymous_unknown_and_unauthorised_callers(
    service: str, guarded_servers: dict[str, RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    address = f"127.0.0.1:{guarded_servers[service].port}"
    methods = _methods(service)
    assert len(methods) >= 2
    caplog.set_level(logging.WARNING, logger="bundlerec.auth")
    for index, (path, method) in enumerate(methods):
        assert await _call(address, path, method, None) == grpc.StatusCode.UNAUTHENTICATED, path
        assert await _call(address, path, method, UNKNOWN_TOKEN) == grpc.StatusCode.UNAUTHENTICATED, path
        # past authorization the real service answers (an empty request may well be INVALID_ARGUMENT)
        as_reader = await _call(address, path, method, READER_TOKEN)
        assert (as_reader not in REFUSED) if index == 0 else (as_reader == grpc.StatusCode.PERMISSION_DENIED), path
        assert await _call(address, path, method, ADMIN_TOKEN) not in REFUSED, path
    logged = caplog.text + " ".join(str(getattr(r, "fields", "")) for r in caplog.records)
    assert "permission_denied" in logged and "unauthenticated" in logged
    assert UNKNOWN_TOKEN not in logged and READER_TOKEN not in logged and ADMIN_TOKEN not in logged


async def test_a_request_that_does_not_decode_is_refused_as_unauthenticated_before_it_is_read(
    guarded_servers: dict[str, RunningServer],
) -> None:
    undecodable = b"\x0a\x02\xff\xfe"  # field 1 (user_id), a string of invalid UTF-8
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded_servers['profile'].port}") as channel:
        call = channel.unary_unary(
            "/bundlerec.v1.ProfileService/GetProfile",
            request_serializer=lambda raw: raw,
            response_deserializer=profile_pb2.GetProfileResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await call(undecodable, timeout=5)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as known:
            await call(undecodable, timeout=5, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))
        assert known.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in (known.value.details() or "")


async def test_health_stays_open_and_reflection_needs_a_caller(guarded_servers: dict[str, RunningServer]) -> None:
    address = f"127.0.0.1:{guarded_servers['profile'].port}"
    async with grpc.aio.insecure_channel(address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.ServerReflectionInfo(iter([ask]), timeout=5):
                pass
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        replies = [
            r
            async for r in stub.ServerReflectionInfo(
                iter([ask]), timeout=5, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),)
            )
        ]
        names = {s.name for s in replies[0].list_services_response.service}
        assert "bundlerec.v1.ProfileService" in names


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[caller]]\nname='x'\nallow=['*']\n", "could never authenticate"),
        ("[[caller]]\nname='x'\ntoken_sha256=['abc']\nallow=['*']\n", "64-character hex"),
        (f"[[caller]]\nname='x'\ntoken_sha256=['{'a' * 64}']\nallow=['bundlerec.v1.Nope/*']\n", "names no service"),
        (f"[[caller]]\nname='x'\ntoken_sha256=['{'a' * 64}']\nallow=['*']\nrole='admin'\n", "role"),
        ("[[caller]\n", "not valid TOML"),
        (
            f"[[caller]]\nname='x'\ntoken_sha256=['{'a' * 64}']\nallow=['bundlerec.v1.ProfileService/DeleteUsers']\n",
            "has no method 'DeleteUsers'",
        ),
        (
            "[[caller]]\nname='x'\ncertificate_names=['gw']\nallow=['*']\n"
            "[[caller]]\nname='y'\ncertificate_names=['gw']\nallow=['*']\n",
            "certificate name is listed for two",
        ),
    ],
)
def test_a_bad_auth_file_stops_the_start_naming_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "auth.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as stopped:
        AuthPolicy.load(str(path), ["bundlerec.v1.ProfileService"])
    assert problem in str(stopped.value)


# --- mutual TLS between the gateway and a real profile service ----------------------------------


@pytest.fixture
async def tls_profile(tmp_path: Path, pki: Pki) -> AsyncIterator[RunningServer]:
    policy = tmp_path / "profile-auth.toml"
    policy.write_text(
        f"""
[[caller]]
name = "gateway"
certificate_names = ["gateway"]
allow = ["bundlerec.v1.ProfileService/GetProfile"]

[[caller]]
name = "admin"
token_sha256 = ["{sha256(ADMIN_TOKEN)}"]
allow = ["bundlerec.v1.ProfileService/DeleteUser"]
"""
    )
    settings = profile_settings(
        f"sqlite:///{tmp_path / 'profile.sqlite3'}",
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca),
        auth_file=str(policy),
        health_port=free_port(),
    )
    running = await start_server(settings, await build_profile(settings))
    yield running
    await running.stop()


async def _profile_call(port: int, security: ChannelSecurity, *, erase: bool = False) -> grpc.StatusCode:
    channel = open_channel(f"localhost:{port}", security)
    stub = profile_pb2_grpc.ProfileServiceStub(channel)
    try:
        if erase:
            await stub.DeleteUser(profile_pb2.DeleteUserRequest(user_id="u1"), timeout=5)
        else:
            await stub.GetProfile(profile_pb2.GetProfileRequest(user_id="u1"), timeout=5)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as error:
        return error.code()
    finally:
        await channel.close()


async def test_mutual_tls_admits_only_certificates_of_our_ca_and_checks_what_each_may_call(
    tls_profile: RunningServer, pki: Pki
) -> None:
    port = tls_profile.port
    gateway = ChannelSecurity(ca_file=str(pki.ca), cert_file=str(pki.gateway_cert), key_file=str(pki.gateway_key))
    assert await _profile_call(port, gateway) == grpc.StatusCode.OK
    # no client certificate, or one from another CA: the handshake fails
    assert await _profile_call(port, ChannelSecurity(ca_file=str(pki.ca))) == grpc.StatusCode.UNAVAILABLE
    rogue = ChannelSecurity(ca_file=str(pki.ca), cert_file=str(pki.rogue_cert), key_file=str(pki.rogue_key))
    assert await _profile_call(port, rogue) == grpc.StatusCode.UNAVAILABLE
    # plaintext against a TLS server
    assert await _profile_call(port, ChannelSecurity()) == grpc.StatusCode.UNAVAILABLE
    # a certificate of our CA whose name the auth file does not list; a listed one, for an RPC not allowed
    stranger = ChannelSecurity(ca_file=str(pki.ca), cert_file=str(pki.server_cert), key_file=str(pki.server_key))
    assert await _profile_call(port, stranger) == grpc.StatusCode.UNAUTHENTICATED
    assert await _profile_call(port, gateway, erase=True) == grpc.StatusCode.PERMISSION_DENIED


async def test_probes_that_speak_no_tls_get_health_on_the_health_port_and_nothing_else(
    tls_profile: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_profile.health_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "bundlerec.liveness", "bundlerec.v1.ProfileService"):

            async def serving(service: str = service) -> bool:  # readiness: at the start, then every 0.2 s
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            await eventually(serving, seconds=5, every=0.1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await profile_pb2_grpc.ProfileServiceStub(channel).GetProfile(
                profile_pb2.GetProfileRequest(user_id="u1"), timeout=5
            )
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED  # the API is not on this port


async def test_the_gateway_reaches_a_tls_profile_service_only_with_its_certificate(
    tls_profile: RunningServer, pki: Pki, tmp_path: Path
) -> None:
    async def profile_degraded(**client: str) -> bool:
        settings = GatewaySettings(
            port=0,
            metrics_port=0,
            profile_address=f"localhost:{tls_profile.port}",
            candidate_address="127.0.0.1:9",
            ranker_address="127.0.0.1:9",
            deadline_ms=2000,
            **client,
        )
        gateway = await assemble(settings)
        server = await start_server(settings, gateway.parts())
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                reply = await gateway_pb2_grpc.RecommendationServiceStub(channel).Recommend(
                    gateway_pb2.RecommendRequest(user_id="u1", page_size=3), timeout=10
                )
            return any(d.stage == gateway_pb2.STAGE_PROFILE for d in reply.degraded)
        finally:
            await server.stop()

    with_certificate = {
        "client_tls_ca_file": str(pki.ca),
        "client_tls_cert_file": str(pki.gateway_cert),
        "client_tls_key_file": str(pki.gateway_key),
    }
    assert not await profile_degraded(**with_certificate)
    assert await profile_degraded(client_tls_ca_file=str(pki.ca))  # TLS, but no certificate of its own
    token = tmp_path / "token"
    token.write_text(ADMIN_TOKEN + "\n")  # the admin may erase, not read: GetProfile is refused
    assert await profile_degraded(**with_certificate, client_token_file=str(token))


def test_half_configured_tls_stops_the_start(pki: Pki) -> None:
    from bundlerec.runtime.tls import server_credentials

    with pytest.raises(SystemExit, match="set both or neither"):
        server_credentials(str(pki.server_cert), "", "")
    with pytest.raises(SystemExit, match="needs tls_cert_file"):
        server_credentials("", "", str(pki.ca))
    with pytest.raises(SystemExit, match="cannot read"):
        server_credentials(str(pki.server_cert), "/nonexistent/key.pem", "")


def test_no_private_key_or_credential_file_is_committed() -> None:
    """The repository (and so every image built from it) carries no key, certificate or token:
    tests make theirs at run time, deployments take theirs from Secrets."""
    import re
    import subprocess

    root = Path(__file__).resolve().parent.parent
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    assert tracked
    named = [p for p in tracked if re.search(r"\.(pem|key|crt|p12|pfx|token)$|(^|/)\.env$", p)]
    assert named == []
    private_key = re.compile(rb"-----BEGIN (?:[A-Z ]+ )?PRIVATE KEY-----")
    holding = [p for p in tracked if (root / p).is_file() and private_key.search((root / p).read_bytes())]
    assert holding == []
