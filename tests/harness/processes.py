"""Services as real separate processes, for tests that signal or kill them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The installed console script, from the same environment as the test run.
BUNDLEREC = str(Path(sys.executable).with_name("bundlerec"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(service: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    prefix = f"BUNDLEREC_{service.upper()}_"
    full_env = {**os.environ, f"{prefix}METRICS_PORT": "0", f"{prefix}LOG_LEVEL": "warning", **env}
    return subprocess.Popen(
        [BUNDLEREC, "serve", service],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float = 60, service: str = "") -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"service exited early ({process.returncode}): {process.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"{address} not serving after {timeout} s")


def serve(
    service: str, env: dict[str, str], *, wait: bool = True, timeout: float = 60
) -> tuple[subprocess.Popen[bytes], str]:
    """`bundlerec serve SERVICE` with these settings on a free port, and its address; waited for
    until SERVING unless `wait` is False (killed when it never gets there)."""
    port = free_port()
    process = start_service(service, {**env, f"BUNDLEREC_{service.upper()}_PORT": str(port)})
    address = f"127.0.0.1:{port}"
    if wait:
        try:
            wait_serving(address, process, timeout)
        except BaseException:
            process.kill()
            process.wait()
            raise
    return process, address


def candidate_settings(database_url: str, encoder_dir: str, index_dir: Path) -> dict[str, str]:
    """A candidate service on this catalogue, saving its index under `index_dir`, without a ranker model."""
    return {
        "BUNDLEREC_CANDIDATE_DATABASE_URL": database_url,
        "BUNDLEREC_CANDIDATE_ENCODER_DIR": encoder_dir,
        "BUNDLEREC_CANDIDATE_INDEX_DIR": str(index_dir),
        "BUNDLEREC_CANDIDATE_MODELS_DIR": "",
    }


def start_profile(database_url: str) -> tuple[subprocess.Popen[bytes], str]:
    return serve("profile", {"BUNDLEREC_PROFILE_DATABASE_URL": database_url})


class Services(dict[str, tuple[subprocess.Popen[bytes], str]]):
    """Name → (process, address) of services started by `four_services`."""

    def __init__(self, settings: dict[str, str], ports: dict[str, int]) -> None:
        super().__init__()
        self.settings, self.ports = settings, ports

    def start(self, *names: str) -> None:
        """Starts these services at once (their imports share the cores) and waits until each serves."""
        for name in names:
            process = start_service(name, {**self.settings, f"BUNDLEREC_{name.upper()}_PORT": str(self.ports[name])})
            self[name] = (process, f"127.0.0.1:{self.ports[name]}")
        for name in names:
            wait_serving(self[name][1], self[name][0])

    def restart(self, name: str) -> None:
        """Stops the service with SIGTERM, as an orchestrator does, and starts it again on its port."""
        process = self[name][0]
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        self.start(name)


@contextlib.contextmanager
def four_services(
    profile_url: str, catalogue_url: str, models: Path, encoder_dir: str, *, live_statistics: bool = False, **env: str
) -> Iterator[Services]:
    """The profile, candidate, ranker and gateway services as processes on these stores, the
    first three started together, the gateway once they serve; `live_statistics`: the candidate
    service reads the profile service's behaviour log; `env`: more settings (BUNDLEREC_... =
    value). Stopped with SIGTERM (killed after 30 s) at the end."""
    ports = {name: free_port() for name in ("profile", "candidate", "ranker", "gateway")}
    settings = {
        "BUNDLEREC_PROFILE_DATABASE_URL": profile_url,
        "BUNDLEREC_CANDIDATE_DATABASE_URL": catalogue_url,
        "BUNDLEREC_CANDIDATE_ENCODER_DIR": encoder_dir,
        "BUNDLEREC_CANDIDATE_INDEX_DIR": "",
        "BUNDLEREC_CANDIDATE_MODELS_DIR": "",
        "BUNDLEREC_RANKER_MODELS_DIR": str(models),
        "BUNDLEREC_RANKER_PROVIDERS": "cpu",
        "BUNDLEREC_GATEWAY_PROFILE_ADDRESS": f"127.0.0.1:{ports['profile']}",
        "BUNDLEREC_GATEWAY_CANDIDATE_ADDRESS": f"127.0.0.1:{ports['candidate']}",
        "BUNDLEREC_GATEWAY_RANKER_ADDRESS": f"127.0.0.1:{ports['ranker']}",
        **({"BUNDLEREC_CANDIDATE_PROFILE_ADDRESS": f"127.0.0.1:{ports['profile']}"} if live_statistics else {}),
        **env,
    }
    started = Services(settings, ports)
    try:
        started.start("profile", "candidate", "ranker")
        started.start("gateway")  # after them: its channels never start in a reconnect backoff
        yield started
    finally:
        for process, _ in started.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in started.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
