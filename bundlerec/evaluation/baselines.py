"""The baselines every figure is reported beside: popularity, item-kNN and BPR matrix factorisation.

Each `fit_xxx(split)` learns only from `split.histories` — events.csv, plus the valid.csv rows for
next_item test — which is exactly what the protocol lets a model know for that split; the split's
positives are never seen. All three return a Scorer (protocol.py), like our model does.

Ties: a full ranking over thousands of targets has many equal scores (every unseen target scores 0
for item-kNN), and the metrics would then rank tied targets by argpartition's whim. Every baseline
therefore breaks ties by popularity, then by file order, so that its figures are reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from bundlerec.evaluation.bpr import fit_bpr
from bundlerec.evaluation.interactions import TIE_BREAK, Interactions, interactions, membership, popularity_scores
from bundlerec.evaluation.protocol import EvalSplit, Scorer

KNN_NEIGHBOURS = 100


@dataclass
class _Popularity:
    scores: np.ndarray
    name: str = "popularity"

    def score(self, split: EvalSplit, users: Sequence[str]) -> np.ndarray:
        return np.broadcast_to(self.scores, (len(users), len(self.scores)))


def fit_popularity(split: EvalSplit, *, seed: int = 0) -> Scorer:
    """Targets by number of interactions in the training histories (bundle events for the bundle
    task, item events for next_item), the same list for every user. `seed` is unused: it is
    deterministic."""
    del seed
    return _Popularity(popularity_scores(split))


@dataclass
class _ItemKNN:
    data: Interactions
    similarity: sp.csr_matrix  # columns × targets
    tie_break: np.ndarray
    name: str = "item_knn"

    def score(self, split: EvalSplit, users: Sequence[str]) -> np.ndarray:
        rows = [self.data.users[user] for user in users]
        scores = (self.data.matrix[rows] @ self.similarity).toarray().astype(np.float32)
        return scores + self.tie_break


def fit_item_knn(split: EvalSplit, *, seed: int = 0, neighbours: int = KNN_NEIGHBOURS) -> Scorer:
    """Item-based collaborative filtering (Sarwar et al., WWW'01; Deshpande & Karypis, TOIS'04).

    Cosine similarity between the columns of the binary users × columns matrix; as in Deshpande &
    Karypis, every history column keeps only its `neighbours` most similar targets, and a user's
    score for a target is the sum of the similarities from the columns in the user's history.
    (Keeping instead the top columns per *target* was measured too: the same on the next_item valid
    splits, but on youshu valid Recall@20 0.191 against 0.236, since a bundle's 100 nearest columns
    among 37k items and bundles rarely include a given user's.)

    Bundle task: the columns are items and bundles, and every bundle also contributes one extra row
    that holds the bundle and its member items, as if it were a basket. So a bundle is similar to
    the items it contains (a user who only liked items still gets bundle scores, and a bundle nobody
    has bought yet — every held-out bundle of amazon-clothing — is reachable through its items), and
    to the items and bundles its buyers interacted with. One cosine over one matrix keeps the two
    signals on the same scale without a mixing weight to tune. `seed` is unused: it is deterministic.
    """
    del seed
    data = interactions(split)
    matrix = data.matrix
    if split.task == "bundle":
        baskets = sp.hstack([membership(split), sp.identity(len(split.target_ids), np.float32)])
        matrix = sp.vstack([matrix, baskets], format="csr")
    norms = np.sqrt(np.asarray(matrix.sum(axis=0)).ravel())
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
    normalised = matrix @ sp.diags(inverse)
    n_targets = len(split.target_ids)
    targets = normalised[:, data.targets : data.targets + n_targets]
    similarity = (normalised.T @ targets).tocoo()
    self_pair = similarity.row == similarity.col + data.targets  # a target is not its own neighbour
    keep = top_per_group(similarity.row, similarity.data, neighbours) & ~self_pair
    pruned = sp.csr_matrix(
        (similarity.data[keep], (similarity.row[keep], similarity.col[keep])), shape=similarity.shape
    )
    return _ItemKNN(data, pruned, TIE_BREAK * popularity_scores(split))


def top_per_group(groups: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k largest values within each group id (ties: first in input order)."""
    return rank_in_group(groups, values) < k


def rank_in_group(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's rank (0 = largest) among the values of its group id, in input order (ties:
    first in input order)."""
    order = np.lexsort((-values, groups))
    sorted_groups = groups[order]
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - np.searchsorted(sorted_groups, sorted_groups, side="left")
    return rank


BASELINES = {"popularity": fit_popularity, "item_knn": fit_item_knn, "bpr": fit_bpr}
