"""The learning loop measured online: simulated shoppers (bundlerec/online/simulator.py) against the
four real services, the exposure log, and the experiment report.

    python bench/online.py [--workdir var/bench/online] [--shoppers 300] [--days 5] [--seed 1]
                           [--scenarios ab,launch,retrain,retrain-warm]

1. The demo's data (`bundlerec demo`'s steps 1-3, kept in WORKDIR/base); each scenario runs on its
   own copy, so none sees another's pages.
2. A/B: the trained model against popularity-only ranking, half the shoppers each (variants
   "trained" and "popularity", exploration off in both). Goal: the report finds the trained model
   better in click-through, with a 95 % interval of the relative difference excluding zero, and the
   sample-ratio check passes.
3. A launch: after the first day, a new bundle of one department's products joins the catalogue;
   the shoppers whose favourites hold that department would buy it (the simulator's `loved`). Arm
   "explore" gives 10 % of page positions to exploration, arm "no-explore" none. Reported per arm,
   for the pages about that department (a product page of one of its products, or the home page of
   a shopper whose first favourite it is) and for all the pages of its fans: the first page with the
   bundle in its top 3, how many showed it, the share with it in the top 3 per day; and what
   exploration cost in overall click-through (the report's relative difference, same run). Goal
   (stated here, issue 17): with exploration, in the top 3 within the first 5 pages about it.
4. A week of a changing shop (`--scenarios retrain`, warm retrains: `retrain-warm`; `--days 7`):
   on day 1 every department launches a bundle its fans prefer; from day 2 `bundlerec retrain`
   runs before each day, and the ranker follows what its gate promotes. Arm "retrained" serves the
   promoted version, arm "frozen" day 0's. Reported from day 2: click-through, purchase rate and
   revenue per page with the relative difference and its interval, the purchase rate per day, and
   each retrain's decision. Goal: the retrained model's conversion beats the frozen one's.
Prints the figures and writes OUT/online.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundlerec.commands.demo import prepare_demo, start_services, stop_services
from bundlerec.commands.experiments import read_pages
from bundlerec.commands.simulate import run_simulation
from bundlerec.datasets import read_dataset
from bundlerec.datasets.demo_catalogue import DEPARTMENTS
from bundlerec.online.report import report
from bundlerec.online.simulator import DEPARTMENT_OF, PageSeen, Simulation, SimulationSettings
from bundlerec.ranking.promotion import serving_version
from bundlerec.runtime.tls import ChannelSecurity
from bundlerec.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2

LAUNCHED = "bnd-launch-1"
LAUNCH_DEPARTMENT = "Coffee"
FIGURES = ("pages", "click_through", "purchase", "revenue_per_page")
LOVED_APPEAL = 1.0  # above any bundle of the catalogue (0.6 at most): the segment's new favourite


def scenario_root(base: Path, name: str) -> Path:
    root = base.parent / name
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(base, root, ignore=shutil.ignore_patterns("shop"))
    (root / "shop").symlink_to((base / "shop").resolve())
    return root


def variants_env(variants: list[dict[str, Any]]) -> dict[str, str]:
    return {"BUNDLEREC_GATEWAY_EXPERIMENT_VARIANTS": json.dumps(variants), "BUNDLEREC_GATEWAY_DEADLINE_MS": "500"}


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
        simulation = asyncio.run(run_simulation(services[-1].address, ChannelSecurity(), settings))
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
            launch(services[1].address, {LAUNCHED: ("Barista starter set", members)})

    try:
        loved = {LAUNCHED: (department, LOVED_APPEAL)}
        launched = SimulationSettings(**{**vars(settings), "loved": loved})
        simulation = asyncio.run(run_simulation(services[-1].address, ChannelSecurity(), launched, before_day))
        time.sleep(1.0)
        doc = report(list(read_pages(services[0].address, ChannelSecurity(), None, None, 0)), "no-explore")
    finally:
        stop_services(services)
    arms: dict[str, Any] = {}
    for arm in ("explore", "no-explore"):
        fans = [
            p for p in simulation.pages if p.variant == arm and department in p.departments and p.day >= launched_on
        ]
        arms[arm] = {
            "about_it": launch_reach([p for p in fans if p.topic == department], launched_on, settings.days),
            "all_fans": launch_reach(fans, launched_on, settings.days),
            "click_through": doc["variants"][arm]["click_through"],
        }
    arms["explore"]["click_through_cost"] = doc["variants"]["explore"]["click_through"].get("relative_to_control")
    return {"launched_on_day": launched_on, "department": LAUNCH_DEPARTMENT, "members": members, "arms": arms}


def launch_reach(pages: list[PageSeen], launched_on: int, days: int) -> dict[str, Any]:
    """How far the launch got on `pages`: the first with it in the top 3, how many showed it, the
    share with it in the top 3 per day."""
    top3 = [LAUNCHED in p.bundle_ids[:3] for p in pages]
    per_day = {}
    for day in range(launched_on, days):
        of_day = [t for t, p in zip(top3, pages, strict=True) if p.day == day]
        per_day[day] = round(sum(of_day) / len(of_day), 3) if of_day else None
    return {
        "pages": len(pages),
        "first_page_in_top3": top3.index(True) + 1 if True in top3 else None,
        "pages_showing_it": sum(LAUNCHED in p.bundle_ids for p in pages),
        "pages_with_it_in_top3": sum(top3),
        "top3_share_by_day": per_day,
    }


def retrain_week(base: Path, settings: SimulationSettings, full: bool) -> dict[str, Any]:
    """A week of a changing shop: on day 1 each department launches a bundle its fans prefer to the
    catalogue's; from day 2 `bundlerec retrain` runs before each day (`full`: from scratch, else
    warm from the serving version; through its gate, the window the previous simulated day), and
    the ranker follows the version it promotes. Arm "retrained" serves that version, arm "frozen"
    the version of day 0. Both explore (0.1)."""
    root = scenario_root(base, "retrain-full" if full else "retrain-warm")
    frozen = serving_version(root / "models")
    env = variants_env([{"name": "frozen", "share": 0.5, "model_version": frozen}, {"name": "retrained", "share": 0.5}])
    env["BUNDLEREC_RANKER_POLL_SECONDS"] = "1"
    launches = {f"bnd-launch-{d}": (d, LOVED_APPEAL) for d in range(len(DEPARTMENTS))}
    services = start_services(root, overrides=env)
    started: dict[int, dt.datetime] = {}
    retrains: list[dict[str, Any]] = []

    async def before_day(day: int) -> None:
        started[day] = dt.datetime.now(dt.UTC)
        if day == 1:
            shop = base / "shop"
            launch(services[1].address, {b: (f"{DEPARTMENTS[d].name} starter set", launch_members(shop, d))
                                         for b, (d, _) in launches.items()})  # fmt: skip
        if day >= 2:
            window = (started[day] - started[day - 1]).total_seconds() / 86_400
            retrains.append(await asyncio.to_thread(run_retrain, root, services, window, full))
            await asyncio.sleep(3.0)  # the ranker's next look at the models directory (1 s)

    try:
        week = SimulationSettings(**{**vars(settings), "loved": launches})
        simulation = asyncio.run(run_simulation(services[-1].address, ChannelSecurity(), week, before_day))
        time.sleep(1.0)
        after = started.get(2)
        doc = report(list(read_pages(services[0].address, ChannelSecurity(), after, None, 0)), "frozen")
    finally:
        stop_services(services)
    retrained = doc["variants"]["retrained"]
    return {
        "mode": "full" if full else "warm",
        "frozen_version": frozen,
        "retrains": retrains,
        "from_day_2": {v: {m: doc["variants"][v][m] for m in FIGURES} for v in doc["variants"]},
        "retrained_vs_frozen_purchase": retrained["purchase"].get("relative_to_control"),
        "retrained_vs_frozen_click_through": retrained["click_through"].get("relative_to_control"),
        "purchase_rate_by_day": {
            day: {v: round(r["purchase_rate"], 3) for v, r in sorted(Simulation(pages).by_variant().items())}
            for day, pages in sorted(_by_day(simulation.pages).items())
        },
        "sample_ratio": doc["sample_ratio"],
    }


def _by_day(pages: list[PageSeen]) -> dict[int, list[PageSeen]]:
    out: dict[int, list[PageSeen]] = {}
    for page in pages:
        out.setdefault(page.day, []).append(page)
    return out


def launch(candidate: str, bundles: dict[str, tuple[str, list[str]]]) -> None:
    """New catalogue bundles (id: (title, members)), as a merchandiser adds them."""
    listed = [common_pb2.Bundle(bundle_id=b, title=title, item_ids=m) for b, (title, m) in bundles.items()]
    with grpc.insecure_channel(candidate) as channel:
        stub = candidate_pb2_grpc.CandidateServiceStub(channel)
        stub.UpsertBundles(candidate_pb2.UpsertBundlesRequest(bundles=listed), timeout=30)


def run_retrain(root: Path, services: list[Any], window_days: float, full: bool) -> dict[str, Any]:
    """`bundlerec retrain` against the services, as the nightly job runs it; its decision."""
    models = root / "models"
    before = serving_version(models)
    command = [
        sys.executable, "-m", "bundlerec", "retrain", "--profile", services[0].address,
        "--candidate", services[1].address, "--models", str(models), "--window-days", f"{window_days:.8f}",
        "--history-days", "3650", "--min-window-shoppers", "1", "--threads", "2",
    ]  # fmt: skip
    if full:
        command.append("--full")
    started = time.monotonic()
    env = {**os.environ, "BUNDLEREC_RETRAIN_WORK_DIR": str(root / "retrain")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    after = serving_version(models)
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return {"exit": done.returncode, "seconds": round(time.monotonic() - started, 1), "serving_before": before,
            "serving_after": after, "said": tail}  # fmt: skip


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
    scenarios = {
        "ab": ("A/B: trained model against popularity-only ranking", ab_test),
        "launch": ("launch: a new bundle, with and without exploration", launch_test),
        "retrain": ("a week of launches: retrained nightly (full), against frozen", partial(retrain_week, full=True)),
        "retrain-warm": ("the same week, retrained warm", partial(retrain_week, full=False)),
    }
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
