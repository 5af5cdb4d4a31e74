"""The model's memorization part: item-to-target co-occurrence neighbours, frozen at training time.

A Transformer over learned embeddings generalizes, but it forgets rare pairs: an item bought once
with another in a single session leaves little trace in an embedding, while item-kNN keeps it
exactly. So the model carries, like the wide half of Wide & Deep (Cheng et al., DLRS 2016), a
table of each column's nearest targets by co-occurrence, and adds their summed similarity to its
score with a weight chosen on validation (`fit_wide_weight` in train.py). The neural part decides
where the data is dense; the table where it is sparse.

Columns are the vocabulary's item rows, then its bundle rows (offset by num_item_rows). Their
cosine similarity is over the binary users × columns matrix of the training histories plus one
"basket" row per bundle (the bundle and its members), so a bundle is similar to what it contains.
Each column keeps its `k` most similar items and, when there are bundles, its `k` most similar
bundles (Deshpande & Karypis, TOIS 2004, as the item-kNN baseline does).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from bundlerec.evaluation.baselines import rank_in_group
from bundlerec.ranking.features import FIRST_ID, PAD
from bundlerec.training.data import TrainingData


class NeighbourTables(NamedTuple):
    item_index: np.ndarray  # [columns, k] int32 item rows (PAD where fewer neighbours)
    item_weight: np.ndarray  # [columns, k] float32 cosine similarity (0 where PAD)
    bundle_index: np.ndarray  # [columns, k or 0] bundle rows
    bundle_weight: np.ndarray


def empty_tables(num_item_rows: int, num_bundle_rows: int, k: int) -> NeighbourTables:
    """Zero tables of the shapes neighbour_tables() returns (a model being loaded fills them)."""
    columns = num_item_rows + num_bundle_rows
    kb = k if num_bundle_rows > FIRST_ID else 0
    return NeighbourTables(
        np.zeros((columns, k), np.int32),
        np.zeros((columns, k), np.float32),
        np.zeros((columns, kb), np.int32),
        np.zeros((columns, kb), np.float32),
    )


def neighbour_tables(data: TrainingData, k: int) -> NeighbourTables:
    vocabulary = data.vocabulary
    n_items, n_bundles = vocabulary.num_item_rows, vocabulary.num_bundle_rows
    columns = n_items + n_bundles
    rows: list[int] = []
    cols: list[int] = []
    for row, steps in enumerate(data.histories.values()):
        for step in steps:
            if step.bundle != PAD or step.item >= FIRST_ID:  # an item outside the vocabulary has no column
                rows.append(row)
                cols.append(n_items + step.bundle if step.bundle != PAD else step.item)
    row = len(data.histories)
    for bundle in range(FIRST_ID, n_bundles):
        members = vocabulary.bundle_members[bundle]
        for column in (n_items + bundle, *members[members != PAD].tolist()):
            rows.append(row)
            cols.append(column)
        row += 1
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(row, columns))
    matrix.data[:] = 1.0  # repeats count once
    norms = np.sqrt(np.asarray(matrix.sum(axis=0)).ravel())
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
    normalised = (matrix @ sp.diags(inverse)).tocsc()
    tables = empty_tables(n_items, n_bundles, k)
    _fill(normalised, normalised[:, :n_items], 0, tables.item_index, tables.item_weight)
    if n_bundles > FIRST_ID:
        _fill(normalised, normalised[:, n_items:], n_items, tables.bundle_index, tables.bundle_weight)
    return tables


def _fill(
    normalised: sp.csc_matrix, targets: sp.csc_matrix, offset: int, index: np.ndarray, weight: np.ndarray
) -> None:
    """Writes each column's top neighbours among `targets` (whose column 0 is column `offset`)."""
    similarity = (normalised.T @ targets).tocoo()
    valid = (similarity.col >= FIRST_ID) & (similarity.row != similarity.col + offset) & (similarity.data > 0)
    source, target, value = similarity.row[valid], similarity.col[valid], similarity.data[valid]
    slot = rank_in_group(source, value)  # 0 = the most similar
    keep = slot < index.shape[1]
    index[source[keep], slot[keep]] = target[keep]
    weight[source[keep], slot[keep]] = value[keep]
