"""Recommend's candidate recall on the demo shop with and without the two-tower source: the
share of held-out test targets among the candidates the gateway asks the candidate service for
(its Retrieve: the shopper's recent history, `candidate_limit` items and bundles), once as a first page
asks (no user vector) and once as a later page does (the user vector the ranker returned for the
same history), on the demo's four services as processes.

    python bench/two_tower_recall.py [--workdir var/bench-demo] [--users 300]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundlerec.commands.demo import prepare_demo, start_services, stop_services
from bundlerec.datasets.reader import read_dataset
from bundlerec.evaluation.protocol import build_split
from bundlerec.gateway.settings import GatewaySettings
from bundlerec.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2, ranker_pb2, ranker_pb2_grpc
from bundlerec.v1_events import EVENT_TYPES_PB

HISTORY = GatewaySettings().history_length
LIMIT = GatewaySettings().candidate_limit


def ref(target_id: str, is_bundle: bool) -> common_pb2.TargetRef:
    return common_pb2.TargetRef(
        type=common_pb2.TARGET_TYPE_BUNDLE if is_bundle else common_pb2.TARGET_TYPE_ITEM, id=target_id
    )


async def run(args: argparse.Namespace) -> None:
    root = Path(args.workdir)
    dataset = read_dataset(root / "shop")
    split = build_split(dataset, "test")
    users = sorted(split.users)
    random.Random(0).shuffle(users)
    users = users[: args.users]
    services = start_services(root)
    try:
        address = {s.name: s.address for s in services}
        async with (
            grpc.aio.insecure_channel(address["candidate"]) as candidate_channel,
            grpc.aio.insecure_channel(address["ranker"]) as ranker_channel,
        ):
            candidate = candidate_pb2_grpc.CandidateServiceStub(candidate_channel)
            ranker = ranker_pb2_grpc.RankerServiceStub(ranker_channel)
            hits = {"first page (no vector)": 0, "later page (user vector)": 0, "two-tower source alone": 0}
            targets = 0
            for user in users:
                history = split.histories.get(user, [])[-HISTORY:]
                wanted = {split.target_ids[n] for n in split.positives[user]}
                if not history or not wanted:
                    continue
                steps = [ranker_pb2.SequenceStep(target=ref(e.target_id, e.target_type == "bundle"),
                                                 type=EVENT_TYPES_PB[e.event_type]) for e in history]  # fmt: skip
                one = [ranker_pb2.BundleCandidate(item_ids=[next(iter(dataset.items))])]
                rank = ranker_pb2.RankRequest(sequence=steps, candidates=one, return_user_vector=True)
                ranked = await ranker.Rank(rank)
                recent = [candidate_pb2.RecentInteraction(target=s.target, type=s.type) for s in steps]
                requests = {
                    "first page (no vector)": candidate_pb2.RetrieveRequest(
                        recent=recent, item_limit=LIMIT, bundle_limit=LIMIT),
                    "later page (user vector)": candidate_pb2.RetrieveRequest(
                        recent=recent, item_limit=LIMIT, bundle_limit=LIMIT, user_vector=ranked.user_vector),
                    "two-tower source alone": candidate_pb2.RetrieveRequest(
                        recent=recent, item_limit=LIMIT, bundle_limit=LIMIT, user_vector=ranked.user_vector,
                        sources=[candidate_pb2.CANDIDATE_SOURCE_TWO_TOWER]),
                }  # fmt: skip
                targets += len(wanted)
                for name, request in requests.items():
                    reply = await candidate.Retrieve(request)
                    found = {c.target.id for c in (*reply.items, *reply.bundles)}
                    hits[name] += len(wanted & found)
            print(f"demo shop, {len(users)} test shoppers, {targets} held-out targets, {LIMIT} items + {LIMIT} bundles")
            for name, hit in hits.items():
                print(f"  {name:<26} recall {hit / max(1, targets):.3f}")
    finally:
        stop_services(services)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="var/bench-demo")
    parser.add_argument("--users", type=int, default=300)
    args = parser.parse_args()
    if prepare_demo(Path(args.workdir)) != 0:
        raise SystemExit("the demo could not be prepared")
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
