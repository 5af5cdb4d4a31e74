"""Services as real separate processes, for tests that signal or kill them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
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


def start_profile(database_url: str, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = port or free_port()
    process = start_service(
        "profile",
        {"BUNDLEREC_PROFILE_DATABASE_URL": database_url, "BUNDLEREC_PROFILE_PORT": str(port)},
    )
    address = f"127.0.0.1:{port}"
    wait_serving(address, process)
    return process, address
