"""Full-ranking metrics: every target is scored for every evaluated user, nothing is sampled.

Sampled-negative metrics (rank the positive among 100 random targets) are known to disagree with
full ranking even on the order of models (Krichene & Rendle, KDD'20), and FORMAT.md asks for full
ranking, so the scorer returns a dense [users, targets] matrix per batch and only the top max(k) of
each row is ever sorted.

Keys: bundle task `Recall@k`, next_item task `HR@k` (the same quantity: hits over the user's number
of positives, which is 1 in leave-one-out), `NDCG@k` (binary gains, ideal DCG over min(#positives,
k) hits), `Coverage@k` (distinct targets in all top-k lists / number of targets). The cold subset
repeats Recall/HR and NDCG counting only positives whose target has fewer than COLD_THRESHOLD
training interactions, averaged over the users that have such a positive; "cold<5 positives" says
how many there were. When there are none the cold metrics are left out, not reported as zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bundlerec.evaluation.protocol import COLD_THRESHOLD, EvalSplit, Scorer

COLD = f"cold<{COLD_THRESHOLD}"


def hit_name(task: str) -> str:
    """The name of the hit-rate metric for a task: HR for next_item, Recall for bundle."""
    return "HR" if task == "next_item" else "Recall"


def evaluate_scorer(
    split: EvalSplit, scorer: Scorer, ks: Sequence[int] = (10, 20, 40), batch_users: int = 1024
) -> dict[str, float]:
    """Scores every user of `split` in batches of `batch_users` and returns the metrics by name."""
    ks = sorted(set(ks))
    n_targets = len(split.target_ids)
    top_k = min(ks[-1], n_targets)
    cold = split.training_counts < COLD_THRESHOLD
    sums = _Sums(ks)
    covered = {k: np.zeros(n_targets, dtype=bool) for k in ks}
    for start in range(0, len(split.users), batch_users):
        users = split.users[start : start + batch_users]
        scores = np.array(scorer.score(split, users), dtype=np.float32)  # a copy: masking writes into it
        if scores.shape != (len(users), n_targets):
            raise ValueError(f"{scorer.name}: score() returned {scores.shape}, expected {(len(users), n_targets)}")
        rows = np.repeat(np.arange(len(users)), [len(split.excluded[u]) for u in users])
        scores[rows, np.concatenate([split.excluded[u] for u in users])] = -np.inf
        top = top_targets(scores, top_k)
        ranked = np.isfinite(np.take_along_axis(scores, top, axis=1))  # False where fewer targets remain
        positive = np.zeros_like(scores, dtype=bool)
        rows = np.repeat(np.arange(len(users)), [len(split.positives[u]) for u in users])
        positive[rows, np.concatenate([split.positives[u] for u in users])] = True
        hits = np.take_along_axis(positive, top, axis=1) & ranked
        sums.add("", hits, positive.sum(axis=1))
        cold_positive = positive & cold
        sums.add(COLD, hits & cold[top], cold_positive.sum(axis=1))
        for k in ks:
            covered[k][top[:, :k][ranked[:, :k]]] = True
    metrics = sums.means(hit_name(split.task))
    for k in ks:
        metrics[f"Coverage@{k}"] = float(covered[k].sum() / n_targets) if n_targets else 0.0
    metrics[f"{COLD} positives"] = float(sums.positives[COLD])
    return metrics


def top_targets(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k highest scores, best first. Tied targets inside the list are ordered by
    index; which of several targets tied at the k-th place gets in is argpartition's (deterministic)
    choice, so scorers should break ties themselves where it matters."""
    if k < scores.shape[1]:
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        candidates = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    picked = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -picked), axis=1)
    return np.take_along_axis(candidates, order, axis=1)


class _Sums:
    """Running per-user sums of Recall and NDCG at each k, for the full and the cold subset."""

    def __init__(self, ks: Sequence[int]) -> None:
        self.ks = list(ks)
        self.recall: dict[tuple[str, int], float] = {}
        self.ndcg: dict[tuple[str, int], float] = {}
        self.users: dict[str, int] = {}
        self.positives: dict[str, int] = {}

    def add(self, subset: str, hits: np.ndarray, n_positive: np.ndarray) -> None:
        """`hits` [users, top] says which ranked targets are positives of the subset; users without
        any positive in the subset are left out of its averages."""
        keep = n_positive > 0
        hits, n_positive = hits[keep], n_positive[keep]
        self.users[subset] = self.users.get(subset, 0) + int(keep.sum())
        self.positives[subset] = self.positives.get(subset, 0) + int(n_positive.sum())
        discount = 1.0 / np.log2(np.arange(hits.shape[1]) + 2.0)
        gains = np.cumsum(hits * discount, axis=1)
        ideal = np.cumsum(discount)
        found = np.cumsum(hits, axis=1)
        for k in self.ks:
            at = min(k, hits.shape[1]) - 1
            if at < 0:
                continue
            recall = found[:, at] / n_positive
            ndcg = gains[:, at] / ideal[np.minimum(n_positive, at + 1) - 1]
            self.recall[subset, k] = self.recall.get((subset, k), 0.0) + float(recall.sum())
            self.ndcg[subset, k] = self.ndcg.get((subset, k), 0.0) + float(ndcg.sum())

    def means(self, hit: str) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for subset in ("", COLD):
            users = self.users.get(subset, 0)
            if not users:
                continue
            suffix = f" {subset}" if subset else ""
            for k in self.ks:
                metrics[f"{hit}@{k}{suffix}"] = self.recall.get((subset, k), 0.0) / users
                metrics[f"NDCG@{k}{suffix}"] = self.ndcg.get((subset, k), 0.0) / users
        return metrics
