"""The training histories of a split as sparse matrices, shared by the baselines that need them.

One column space for both tasks: the items in items.csv order, then (bundle task only) the bundles
in bundles.csv order. A next_item target is item column t; a bundle target is column n_items + t.
Keeping items and bundles in one space lets item-kNN relate a liked item to a bundle, and lets BPR
share item factors between item and bundle interactions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from bundlerec.evaluation.protocol import EvalSplit

# Weight of popularity_scores() when added to a model's scores to break its ties: far below any
# real score step, so it only orders targets the model cannot tell apart.
TIE_BREAK = 1e-6


@dataclass
class Interactions:
    """Binary users × columns matrix of the training histories; `users` maps every user with a
    history (and every evaluated user, possibly with an empty row) to its row."""

    users: dict[str, int]
    matrix: sp.csr_matrix
    n_items: int
    targets: int  # column of target 0: 0 for next_item, n_items for bundle


def interactions(split: EvalSplit) -> Interactions:
    """Builds the matrix; repeated interactions count once, events of any type count alike."""
    dataset = split.dataset
    items = {item: n for n, item in enumerate(dataset.items)}
    n_items = len(items)
    bundles = {b: n_items + n for n, b in enumerate(dataset.bundles)} if split.task == "bundle" else {}
    users = {user: n for n, user in enumerate(split.histories)}
    rows: list[int] = []
    cols: list[int] = []
    for user, steps in split.histories.items():
        for step in steps:
            column = (items if step.target_type == "item" else bundles).get(step.target_id)
            if column is not None:
                rows.append(users[user])
                cols.append(column)
    shape = (len(users), n_items + len(bundles))
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
    matrix.data[:] = 1.0  # duplicates were summed on conversion
    return Interactions(users, matrix, n_items, n_items if split.task == "bundle" else 0)


def membership(split: EvalSplit) -> sp.csr_matrix:
    """Binary bundles × items matrix of bundles.csv (empty for datasets without bundles)."""
    items = {item: n for n, item in enumerate(split.dataset.items)}
    rows: list[int] = []
    cols: list[int] = []
    for n, bundle in enumerate(split.dataset.bundles.values()):
        members = [items[i] for i in bundle.item_ids if i in items]
        rows += [n] * len(members)
        cols += members
    shape = (len(split.dataset.bundles), len(items))
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)


def popularity_scores(split: EvalSplit) -> np.ndarray:
    """float32 per target, all distinct, ordered by (training interactions desc, file order asc) and
    scaled to (0, 1]: a ranking on its own and a tie-breaker for other scores."""
    n = len(split.target_ids)
    order = np.lexsort((np.arange(n), -split.training_counts))
    scores = np.empty(n, dtype=np.float32)
    scores[order] = np.arange(n, 0, -1, dtype=np.float32) / max(n, 1)
    return scores
