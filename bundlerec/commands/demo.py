"""The main job on embedded defaults: the whole product, end to end, on one machine.

Generates the demo shop, imports it (catalogue and events, SQLite), trains a small ranker, starts
the four services as separate processes on localhost exactly as `bundlerec serve NAME` runs them
in production, shows recommendations with their explanations, records new behaviour for one
shopper through the gateway and shows that shopper's next page change, then stops everything with
SIGTERM. It writes under the work directory (default var/demo), except the exported text encoder,
which it shares with the other commands (var/bundlerec/encoder).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bundlerec.client import print_page, recommend_request, view_event
from bundlerec.v1 import gateway_pb2, gateway_pb2_grpc

SERVICES = ("profile", "candidate", "ranker", "gateway")
# `bundlerec demo --serve`: the services' own default ports, so the other commands find the gateway
DEFAULT_PORTS = {"gateway": 50050, "profile": 50051, "candidate": 50052, "ranker": 50053}
CONSOLE_PORT, GATEWAY_METRICS_PORT = 8090, 9100  # `--serve`: the console, and the counters it reads
ENCODER_DIR = "var/bundlerec/encoder"  # shared with `bundlerec encoder export` and training


@dataclass
class Service:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(number: int, text: str) -> None:
    print(f"[{number}/7] {text}", flush=True)


def run_demo(workdir: str, *, keep: bool = False, serve: bool = False) -> int:
    """`serve`: after the tour, the services keep running on their default ports (the gateway on
    127.0.0.1:50050) until Ctrl-C or SIGTERM, for `bundlerec recommend` or `bundlerec loadtest`."""
    root = Path(workdir).resolve()
    marker = root / ".bundlerec-demo"
    if root.exists() and not keep:
        if any(root.iterdir()) and not marker.is_file():
            print(f"{root} is not empty and not a demo directory: not deleting it (use another --workdir)")
            return 2
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    marker.touch()
    started = time.monotonic()
    if prepare_demo(root) != 0:
        return 1

    _step(4, "starting the profile, candidate, ranker and gateway services as separate processes")
    services: list[Service] = []
    try:
        metrics = {"BUNDLEREC_GATEWAY_METRICS_PORT": str(GATEWAY_METRICS_PORT)} if serve else None
        services = start_services(root, DEFAULT_PORTS if serve else None, metrics)
        gateway = services[-1]
        with grpc.insecure_channel(gateway.address) as channel:
            _show(gateway_pb2_grpc.RecommendationServiceStub(channel), root / "shop")
        if serve:
            console, address = start_console(root, DEFAULT_PORTS, CONSOLE_PORT, GATEWAY_METRICS_PORT)
            services.append(console)
            print(f"      the operator console: {address}", flush=True)
            _serve_until_stopped(services)
    finally:
        codes = stop_services(services)
    clean = all(code == 0 for code in codes.values())
    summary = ", ".join(f"{name} {code}" for name, code in codes.items())
    print(f"[7/7] stopped with SIGTERM: exit codes {summary}; {time.monotonic() - started:.0f} s in all", flush=True)
    return 0 if clean else 1


def prepare_demo(root: Path) -> int:
    """Steps 1-3: the demo shop, imported (SQLite), and a trained model; what exists is kept."""
    shop = root / "shop"
    _step(1, f"generating the demo shop in {shop}")
    from bundlerec.datasets.demo import generate_demo_shop

    if not (shop / "dataset.json").is_file():
        generate_demo_shop(shop, seed=1, users=300, items=600, bundles=120)
    _step(2, "exporting the sentence encoder and importing the shop (catalogue + events, SQLite)")
    from bundlerec.commands.importer import ImportTargets, import_dataset
    from bundlerec.training.text import ensure_encoder

    ensure_encoder(Path(ENCODER_DIR))
    targets = ImportTargets(catalogue_url=_catalogue_url(root), profile_url=_profile_url(root), encoder_dir=ENCODER_DIR)
    asyncio.run(import_dataset(str(shop), targets, say=lambda line: print(f"      {line}", flush=True)))

    _step(3, "training a small ranker (PyTorch, exported to ONNX)")
    models = root / "models"
    if not any(models.glob("*/manifest.json")):
        train = [sys.executable, "-m", "bundlerec", "train", "--data", str(shop), "--out", str(models)]
        train += ["--epochs", "4", "--dim", "32", "--encoder-dir", ENCODER_DIR]
        if subprocess.run(train, check=False).returncode != 0:
            print("training failed", file=sys.stderr)
            return 1
    return 0


def _catalogue_url(root: Path) -> str:
    return f"sqlite:///{root / 'catalogue.sqlite3'}"


def _profile_url(root: Path) -> str:
    return f"sqlite:///{root / 'profile.sqlite3'}"


def _environment(root: Path, ports: dict[str, int], overrides: dict[str, str] | None) -> dict[str, str]:
    """What the services are started with: the demo's stores under `root`, each other's ports."""
    catalogue_url = _catalogue_url(root)
    models = root / "models"
    return {
        "BUNDLEREC_PROFILE_DATABASE_URL": _profile_url(root),
        "BUNDLEREC_CANDIDATE_DATABASE_URL": catalogue_url,
        "BUNDLEREC_CANDIDATE_ENCODER_DIR": ENCODER_DIR,
        "BUNDLEREC_CANDIDATE_INDEX_DIR": str(root / "index"),
        "BUNDLEREC_CANDIDATE_MODELS_DIR": str(models),
        "BUNDLEREC_CANDIDATE_PROFILE_ADDRESS": f"127.0.0.1:{ports['profile']}",  # live statistics
        "BUNDLEREC_RANKER_MODELS_DIR": str(models),
        "BUNDLEREC_RANKER_CANDIDATE_ADDRESS": f"127.0.0.1:{ports['candidate']}",
        "BUNDLEREC_GATEWAY_PROFILE_ADDRESS": f"127.0.0.1:{ports['profile']}",
        "BUNDLEREC_GATEWAY_CANDIDATE_ADDRESS": f"127.0.0.1:{ports['candidate']}",
        "BUNDLEREC_GATEWAY_RANKER_ADDRESS": f"127.0.0.1:{ports['ranker']}",
        # a fresh machine is still warming up (imports, first model runs): a roomier deadline than
        # the 100 ms default keeps the demo's pages whole
        "BUNDLEREC_GATEWAY_DEADLINE_MS": "500",
        "BUNDLEREC_GATEWAY_RULES_FILE": str(importlib.resources.files("bundlerec.gateway") / "rules.example.toml"),
        **(overrides or {}),
    }


def start_gateway(root: Path, services: list[Service], overrides: dict[str, str] | None = None) -> Service:
    """One more gateway, on a free port, in front of the running `services` (a benchmark's other arm)."""
    ports = {s.name: s.port for s in services}
    service = _start("gateway", _free_port(), _environment(root, ports, overrides))
    try:
        _wait_serving(service)
    except BaseException:
        stop_services([service])
        raise
    return service


def start_services(
    root: Path, ports: dict[str, int] | None = None, overrides: dict[str, str] | None = None
) -> list[Service]:
    """The four services on the demo's data under `root` (prepare_demo), each its own process,
    started in order and waited for until serving; free ports unless `ports` are given. On a
    failure the ones already started are stopped."""
    ports = ports or {name: _free_port() for name in SERVICES}
    env = _environment(root, ports, overrides)
    services: list[Service] = []
    try:
        for name in SERVICES:
            services.append(_start(name, ports[name], env))
            _wait_serving(services[-1])
            print(f"      {name} serving on {services[-1].address}", flush=True)
    except BaseException:
        stop_services(services)
        raise
    return services


def start_console(root: Path, ports: dict[str, int], port: int, metrics_port: int) -> tuple[Service, str]:
    """`bundlerec console` over the demo's services, with a one-off token (no auth file), and the
    address it printed, which signs in with that token."""
    env = {
        **os.environ,
        "BUNDLEREC_CONSOLE_PORT": str(port),
        "BUNDLEREC_CONSOLE_HOST": "127.0.0.1",
        "BUNDLEREC_CONSOLE_AUTH_FILE": "",
        "BUNDLEREC_CONSOLE_MODELS_DIR": str(root / "models"),
        "BUNDLEREC_CONSOLE_GATEWAY_METRICS_URL": f"http://127.0.0.1:{metrics_port}/metrics",
        **{f"BUNDLEREC_CONSOLE_{name.upper()}_ADDRESS": f"127.0.0.1:{ports[name]}" for name in SERVICES},
    }
    command = [sys.executable, "-m", "bundlerec", "console"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    first = process.stdout.readline().strip()  # "console: http://127.0.0.1:8090/login?token=..."
    if not first.startswith("console: "):
        process.kill()
        raise SystemExit(f"the console did not start (exit code {process.wait()})")
    threading.Thread(target=lambda: sys.stdout.writelines(process.stdout or ()), daemon=True).start()
    return Service("console", port, process), first.removeprefix("console: ")


def _serve_until_stopped(services: list[Service]) -> None:
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    names = ", ".join(f"{s.name} {s.address}" for s in services)
    print(f"      serving until Ctrl-C: {names}", flush=True)
    print("      in another terminal: bundlerec simulate --shoppers 200 --days 3, then bundlerec experiments report",
          flush=True)  # fmt: skip
    try:
        while not stop.wait(1.0):
            if any(s.process.poll() is not None for s in services):
                print("      a service exited; stopping the others", flush=True)
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _show(stub: gateway_pb2_grpc.RecommendationServiceStub, shop: Path) -> None:
    from bundlerec.datasets import read_dataset

    dataset = read_dataset(shop)
    active = Counter(e.user_id for e in dataset.events)
    users = [user for user, _ in active.most_common(3)]
    _step(5, "recommendations through the gateway (profile -> candidates -> ranker -> rules)")
    for user in users:
        print(f"    {user} on the home page:", flush=True)
        print_page(stub.Recommend(recommend_request(user=user, page_size=3), timeout=10), sys.stdout, "      ")
    anchor = next(iter(dataset.bundles.values())).item_ids[0]
    title = dataset.items[anchor].title
    print(f"    an anonymous visitor on the product page of {title!r}:", flush=True)
    request = recommend_request(session="visitor-1", placement="product_page", anchor=anchor, page_size=3)
    print_page(stub.Recommend(request, timeout=10), sys.stdout, "      ")

    user = users[-1]
    seen = {e.target_id for e in dataset.events if e.user_id == user}
    categories = Counter(dataset.items[i].category for i in seen if i in dataset.items)
    fresh = [i for i in dataset.items.values() if i.category not in categories and i.item_id not in seen]
    fresh = fresh or [i for i in dataset.items.values() if i.item_id not in seen]
    chosen = [i for i in fresh if i.category == fresh[0].category][:3]
    _step(6, f"{user} looks at {len(chosen)} items of {chosen[0].category!r}, new to them; their next page:")
    before = stub.Recommend(recommend_request(user=user, page_size=3), timeout=10)
    events = [view_event(user, i.item_id, kind, i.category) for i in chosen for kind in ("view", "click")]
    events.append(view_event(user, chosen[0].item_id, "add_to_cart", chosen[0].category))
    reply = stub.Track(gateway_pb2.TrackRequest(events=events), timeout=10)
    print(f"      tracked {reply.events_recorded} events", flush=True)
    after = stub.Recommend(recommend_request(user=user, page_size=3), timeout=10)
    print_page(after, sys.stdout, "      ")
    changed = [b.bundle_id for b in before.bundles] != [b.bundle_id for b in after.bundles] or [
        [i.item_id for i in b.items] for b in before.bundles
    ] != [[i.item_id for i in b.items] for b in after.bundles]
    print(f"      the page {'changed' if changed else 'did NOT change'} after the new events", flush=True)


def _start(name: str, port: int, env: dict[str, str]) -> Service:
    prefix = f"BUNDLEREC_{name.upper()}_"
    full = {
        f"{prefix}LOG_FORMAT": "text",  # quiet by default; the environment may ask for more
        f"{prefix}LOG_LEVEL": "error",
        f"{prefix}METRICS_PORT": "0",  # no /metrics unless asked
        **os.environ,
        **env,
        f"{prefix}PORT": str(port),
    }
    process = subprocess.Popen([sys.executable, "-m", "bundlerec", "serve", name], env=full)
    return Service(name, port, process)


def _wait_serving(service: Service, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(service.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise SystemExit(f"the {service.name} service exited with code {service.process.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"the {service.name} service was not serving after {timeout:.0f} s")


def stop_services(services: list[Service]) -> dict[str, int]:
    for service in reversed(services):
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    codes = {}
    for service in services:
        try:
            codes[service.name] = service.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.process.kill()
            codes[service.name] = service.process.wait()
    return codes
