"""The main job on embedded defaults: run the profile service on SQLite, feed it demo behaviour,
and show what it keeps.

Runs the service as a separate process, exactly as `bundlerec serve profile` would in
production, and talks to it only over gRPC.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bundlerec.v1 import common_pb2, profile_pb2, profile_pb2_grpc

# A small shop: categories with items, and shoppers with a favourite category each.
CATALOGUE = {
    "Outdoor > Hiking": ["trail boots", "rain shell", "trekking poles", "day pack", "headlamp"],
    "Electronics > Cameras": ["mirrorless camera", "35mm lens", "tripod", "SD card", "camera bag"],
    "Kitchen > Coffee": ["burr grinder", "pour-over kettle", "filter papers", "espresso beans", "scale"],
    "Health > Supplements": ["vitamin D", "omega-3", "magnesium"],
}
SHOPPERS = {"alice": "Outdoor > Hiking", "bob": "Electronics > Cameras", "carol": "Kitchen > Coffee"}
FUNNEL = [
    (common_pb2.EVENT_TYPE_VIEW, 1.0),
    (common_pb2.EVENT_TYPE_CLICK, 0.6),
    (common_pb2.EVENT_TYPE_ADD_TO_CART, 0.35),
    (common_pb2.EVENT_TYPE_PURCHASE, 0.2),
]
TYPE_NAMES = {v: k.removeprefix("EVENT_TYPE_").lower() for k, v in common_pb2.EventType.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_events(seed: int = 7) -> list[common_pb2.Event]:
    """Sessions of view → click → add_to_cart → purchase, mostly in each shopper's favourite."""
    rng = random.Random(seed)
    start = int(time.time()) - 14 * 86_400
    events = []
    for user, favourite in SHOPPERS.items():
        clock = start
        for session in range(6):
            category = favourite if rng.random() < 0.75 else rng.choice(list(CATALOGUE))
            item = rng.randrange(len(CATALOGUE[category]))
            for kind, chance in FUNNEL:
                if rng.random() > chance:
                    break
                clock += rng.randint(20, 600)
                events.append(
                    common_pb2.Event(
                        event_id=f"demo-{user}-{session}-{kind}",
                        user_id=user,
                        type=kind,
                        target=common_pb2.TargetRef(type=common_pb2.TARGET_TYPE_ITEM, id=f"{category}/{item}"),
                        timestamp={"seconds": clock},
                        category=category,
                        context={"placement": "home"},
                    )
                )
            clock += rng.randint(3_600, 86_400)
    return events


def _item_title(target_id: str) -> str:
    category, _, index = target_id.rpartition("/")
    return CATALOGUE[category][int(index)]


def _wait_ready(channel: grpc.Channel, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the profile service exited with code {process.returncode}")
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise SystemExit("the profile service did not become ready in time")


def _print_profile(profile: profile_pb2.Profile) -> None:
    print(
        f"  user {profile.user_id}: {profile.total_events} events kept, personalization "
        f"{'allowed' if profile.consent.personalization else 'NOT allowed'}"
    )
    counts = ", ".join(f"{TYPE_NAMES[c.type]} {c.count}" for c in profile.counts)
    print(f"    counts:      {counts or '-'}")
    affinities = ", ".join(f"{a.category} {a.score:.2f}" for a in profile.affinities[:3])
    print(f"    affinities:  {affinities or '-'}")
    recent = ", ".join(f"{TYPE_NAMES[e.type]} {_item_title(e.target.id)}" for e in profile.recent_events[-4:])
    print(f"    latest:      {recent or '-'}")


def run_demo(workdir: str, *, keep: bool = False) -> int:
    root = Path(workdir)
    if root.exists() and not keep:
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    database = f"sqlite:///{(root / 'profile.sqlite3').resolve()}"
    print(f"[1/4] starting the profile service on 127.0.0.1:{port} (SQLite: {root / 'profile.sqlite3'})")
    env = {
        **os.environ,
        "BUNDLEREC_PROFILE_DATABASE_URL": database,
        "BUNDLEREC_PROFILE_PORT": str(port),
        "BUNDLEREC_PROFILE_METRICS_PORT": "0",
        "BUNDLEREC_PROFILE_LOG_FORMAT": "text",
        "BUNDLEREC_PROFILE_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen([sys.executable, "-m", "bundlerec.cli", "serve", "profile"], env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _wait_ready(channel, process)
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            events = demo_events()
            reply = stub.RecordEvents(profile_pb2.RecordEventsRequest(events=events), timeout=10)
            print(
                f"[2/4] recorded {reply.recorded} demo events for {len(SHOPPERS)} shoppers "
                f"({reply.duplicates} duplicates)"
            )
            retry = stub.RecordEvents(profile_pb2.RecordEventsRequest(events=events), timeout=10)
            print(
                f"      the same batch again (a client retry): {retry.recorded} recorded, "
                f"{retry.duplicates} duplicates -- ingestion is idempotent"
            )
            print("[3/4] profiles:")
            for user in SHOPPERS:
                _print_profile(stub.GetProfile(profile_pb2.GetProfileRequest(user_id=user), timeout=5).profile)
            consent = stub.SetConsent(profile_pb2.SetConsentRequest(user_id="carol", personalization=False), timeout=5)
            print(f"[4/4] carol withdraws personalization consent: {consent.events_erased} events erased")
            _print_profile(stub.GetProfile(profile_pb2.GetProfileRequest(user_id="carol"), timeout=5).profile)
            popular = stub.ListPopularTargets(
                profile_pb2.ListPopularTargetsRequest(target_type=common_pb2.TARGET_TYPE_ITEM, page_size=3), timeout=5
            )
            names = ", ".join(f"{_item_title(t.target.id)} ({t.score:.1f})" for t in popular.targets)
            print(f"      popular items (anonymous aggregates, carol's behaviour still counted): {names}")
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    print(f"the profile service shut down cleanly (exit code {code})" if code == 0 else f"service exit code {code}")
    return 0 if code == 0 else 1
