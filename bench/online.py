"""The learning loop measured online: simulated shoppers (bundlerec/online/simulator.py) against the
four real services, the exposure log, and the experiment report.

    python bench/online.py [--workdir var/bench/online] [--shoppers 300] [--days 5] [--seed 1]

1. The demo's data (`bundlerec demo`'s steps 1-3, kept in WORKDIR/base); each scenario runs on its
   own copy, so none sees another's pages.
2. A/B: the trained model against popularity-only ranking, half the shoppers each (variants
   "trained" and "popularity", exploration off in both). Goal: the report finds the trained model
   better in click-through, with a 95 % interval of the relative difference excluding zero, and the
   sample-ratio check passes.
3. A launch: after the first day, a new bundle of one department's products joins the catalogue;
   the shoppers whose favourites hold that department would buy it (the simulator's `loved`). Arm
   "explore" gives 10 % of page positions to exploration, arm "no-explore" none. Reported per arm:
   the first of that segment's pages with the bundle in its top 3, the share of the segment's pages
   with it in the top 3 per day, and what exploration cost in overall click-through (the report's
   relative difference, same run).
Prints the figures and writes OUT/online.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundlerec.commands.demo import prepare_demo, start_services, stop_services
from bundlerec.commands.experiments import read_pages
from bundlerec.commands.simulate import GatewayShop
from bundlerec.datasets import read_dataset
from bundlerec.datasets.demo_catalogue import DEPARTMENTS
from bundlerec.online.report import report
from bundlerec.online.simulator import DEPARTMENT_OF, Simulation, SimulationSettings, simulate
from bundlerec.runtime.tls import ChannelSecurity
from bundlerec.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2

LAUNCHED = "bnd-launch-1"
LAUNCH_DEPARTMENT = "Coffee"
LOVED_APPEAL = 1.0  # above any bundle of the catalogue (0.6 at most): the segment's new favourite


def scenario_root(base: Path, name: str) -> Path:
    root = base.parent / name
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(base, root, ignore=shutil.ignore_patterns("shop"))
    (root / "shop").symlink_to((base / "shop").resolve())
    return root


def variants_env(variants: list[dict[str, Any]]) -> dict[str, str]:
    return {"BUNDLEREC_GATEWAY_EXPERIMENT_VARIANTS": json.dumps(variants), "BUNDLEREC_GATEWAY_DEADLINE_MS": "500"}


async def run_simulation(gateway: str, settings: SimulationSettings, before_day=None) -> Simulation:  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(gateway) as channel:
        return await simulate(GatewayShop(channel), settings, before_day)


def ab_test(base: Path, settings: SimulationSettings) -> dict[str, Any]:
    root = scenario_root(base, "ab")
    env = variants_env(
        [
            {"name": "popularity", "share": 0.5, "strategy": "popularity", "exploration_share": 0.0},
            {"name": "trained", "share": 0.5, "exploration_share": 0.0},
        ]
    )
    services = start_services(root, overrides=env)
    try:
        started = time.monotonic()
        simulation = asyncio.run(run_simulation(services[-1].address, settings))
        seconds = time.monotonic() - started
        time.sleep(1.0)  # the gateway's last exposure batch
        doc = report(list(read_pages(services[0].address, ChannelSecurity(), None, None, 0)), "popularity")
    finally:
        stop_services(services)
    trained = doc["variants"]["trained"]
    lift = trained["click_through"]["relative_to_control"]
    return {
        "pages": doc["pages"],
        "simulated_pages": len(simulation.pages),
        "seconds": round(seconds, 1),
        "click_through": {v: doc["variants"][v]["click_through"] for v in doc["variants"]},
        "purchase": {v: doc["variants"][v]["purchase"] for v in doc["variants"]},
        "revenue_per_page": {v: doc["variants"][v]["revenue_per_page"] for v in doc["variants"]},
        "trained_vs_popularity_click_through": lift,
        "trained_vs_popularity_purchase": trained["purchase"].get("relative_to_control"),
        "sample_ratio": doc["sample_ratio"],
        "goal_met": bool(lift["low"] and lift["low"] > 0 and not doc["sample_ratio"]["mismatch"]),
    }


def launch_test(base: Path, settings: SimulationSettings) -> dict[str, Any]:
    root = scenario_root(base, "launch")
    env = variants_env(
        [
            {"name": "no-explore", "share": 0.5, "exploration_share": 0.0},
            {"name": "explore", "share": 0.5, "exploration_share": 0.1},
        ]
    )
    department = next(d for d, dept in enumerate(DEPARTMENTS) if dept.name == LAUNCH_DEPARTMENT)
    members = launch_members(base / "shop", department)
    services = start_services(root, overrides=env)
    launched_on = 1

    async def before_day(day: int) -> None:
        if day == launched_on:
            with grpc.insecure_channel(services[1].address) as channel:
                candidate_pb2_grpc.CandidateServiceStub(channel).UpsertBundles(
                    candidate_pb2.UpsertBundlesRequest(
                        bundles=[common_pb2.Bundle(bundle_id=LAUNCHED, title="Barista starter set", item_ids=members)]
                    ),
                    timeout=30,
                )

    try:
        loved = {LAUNCHED: (department, LOVED_APPEAL)}
        simulation = asyncio.run(
            run_simulation(services[-1].address, SimulationSettings(**{**vars(settings), "loved": loved}), before_day)
        )
        time.sleep(1.0)
        doc = report(list(read_pages(services[0].address, ChannelSecurity(), None, None, 0)), "no-explore")
    finally:
        stop_services(services)
    arms: dict[str, Any] = {}
    for arm in ("explore", "no-explore"):
        segment = [
            p
            for p in simulation.pages
            if p.variant == arm and department in p.departments and p.day >= launched_on
        ]
        top3 = [LAUNCHED in p.bundle_ids[:3] for p in segment]
        shown = [LAUNCHED in p.bundle_ids for p in segment]
        per_day = {}
        for day in range(launched_on, settings.days):
            days = [t for t, p in zip(top3, segment, strict=True) if p.day == day]
            per_day[day] = round(sum(days) / len(days), 3) if days else None
        arms[arm] = {
            "segment_pages": len(segment),
            "first_page_in_top3": top3.index(True) + 1 if True in top3 else None,
            "pages_showing_it": sum(shown),
            "top3_share_by_day": per_day,
            "click_through": doc["variants"][arm]["click_through"],
        }
    arms["explore"]["click_through_cost"] = doc["variants"]["explore"]["click_through"].get("relative_to_control")
    return {"launched_on_day": launched_on, "department": LAUNCH_DEPARTMENT, "members": members, "arms": arms}


def launch_members(shop: Path, department: int) -> list[str]:
    """A coffee machine and three of its complements, mid-range (the launch the segment would buy)."""
    dataset = read_dataset(shop)
    spec_paths = [spec.path for spec in (DEPARTMENTS[department].anchor, *DEPARTMENTS[department].complements)]
    mid = set(DEPARTMENTS[department].brands[1:4])
    chosen = []
    for path in spec_paths[:4]:
        items = sorted(i.item_id for i in dataset.items.values() if i.category == path and i.brand in mid)
        chosen.append(items[len(items) // 2])
    assert all(DEPARTMENT_OF[dataset.items[i].category] == department for i in chosen)
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="var/bench/online", help="(default: %(default)s)")
    parser.add_argument("--shoppers", type=int, default=300)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenarios", default="ab,launch", help="which to run (default: %(default)s)")
    args = parser.parse_args()
    command = shlex.join(["python", "bench/online.py", *sys.argv[1:]])
    workdir = Path(args.workdir).resolve()
    base = workdir / "base"
    base.mkdir(parents=True, exist_ok=True)
    if prepare_demo(base) != 0:
        return 1
    settings = SimulationSettings(shoppers=args.shoppers, days=args.days, seed=args.seed)
    doc: dict[str, Any] = {"command": command, "settings": vars(settings)}
    scenarios = {"ab": ("A/B: trained model against popularity-only ranking", ab_test),
                 "launch": ("launch: a new bundle, with and without exploration", launch_test)}  # fmt: skip
    for name in args.scenarios.split(","):
        title, run = scenarios[name]
        print(title, flush=True)
        doc[name] = run(base, settings)
        print(json.dumps(doc[name], indent=2), flush=True)
    (workdir / "online.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {workdir / 'online.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
