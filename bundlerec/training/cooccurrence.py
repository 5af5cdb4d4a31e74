"""The model's memorization part: item-to-target co-occurrence neighbours, frozen at training time.

A Transformer over learned embeddings generalizes, but it forgets rare pairs: an item bought once
with another in a single session leaves little trace in an embedding, while an item-to-item model
keeps it exactly. So the model carries, like the wide half of Wide & Deep (Cheng et al., DLRS
2016), a table of each column's nearest targets by co-occurrence, and adds their summed weight to
its score with a mix chosen on validation (`fit_wide_weight` in mix.py).

Columns are the vocabulary's item rows, then its bundle rows (offset by num_item_rows), over the
binary users × columns matrix of the training histories plus one "basket" row per bundle (the
bundle and its members), so a bundle is related to what it contains. Each column keeps its `k`
strongest items and, when there are bundles, its `k` strongest bundles. Two ways to weigh a pair:
- EASE (Steck, WWW 2019), the default: the item-to-item regression that predicts each column from
  all the others, in closed form from the inverse of the regularized Gram matrix. Unlike cosine it
  discounts a pair that is explained by a third item, and its weights can be negative. It needs a
  dense Gram matrix, so at most `max_columns` columns take part (the most frequent; a rarer column
  gets no row and is left to the neural part). On the shared validation splits it beat cosine by
  a wide margin (NDCG@20 on Youshu 0.136 against 0.115, NDCG@10 on MovieLens 0.067 against 0.058).
- cosine item-kNN (Deshpande & Karypis, TOIS 2004), as the item-kNN baseline computes it: sparse,
  any catalogue size. `l2 = 0` selects it.
Co-occurrence knows nothing of an item bought once or twice. Where items have text, each item column
also carries its nearest items by the cosine of their text embeddings (`text_tables`), each weighed
by how little the target has been bought (`gate`), blended in with a share chosen on validation: the
pretrained encoder's knowledge reaches the rare targets directly, not only through the network.
On bundle data a user's items say more about a bundle than any one item column can: the item view
(`item_view_tables`) predicts each bundle from the user's bundles and from how many of every
bundle's members the user's items cover, the bundle view and the item view that published bundle
models (BGCN, CrossCBR) combine; its bundle tables replace the EASE ones when validation prefers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from bundlerec.evaluation.baselines import rank_in_group
from bundlerec.ranking.features import FIRST_ID, PAD
from bundlerec.training.data import TrainingData

MAX_DENSE_COLUMNS = 20_000  # a 20k × 20k float32 Gram matrix is 1.6 GB; its inverse about a minute on 2 cores
_ROWS_PER_CHUNK = 1024


class NeighbourTables(NamedTuple):
    item_index: np.ndarray  # [columns, k] int32 item rows (PAD where fewer neighbours)
    item_weight: np.ndarray  # [columns, k] float32 weight (0 where PAD)
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


def neighbour_tables(
    data: TrainingData,
    k: int,
    l2: float = 0.0,
    cosine_share: float = 0.0,
    text_share: float = 0.0,
    text_gate: float = 0.0,
    view_share: float = 0.0,
    view_l2: float = 0.0,
    max_columns: int = MAX_DENSE_COLUMNS,
) -> NeighbourTables:
    """The tables of `data`: cosine when `l2` is 0; otherwise EASE with L2 regularization `l2`,
    blended with `cosine_share` of the cosine tables (blend_tables); with `view_share` > 0 the
    bundle tables of the item view (item_view_tables, L2 `view_l2`) instead of those; then
    `text_share` of the text tables with `text_gate` blended in (when the items have text)."""
    if l2 <= 0:
        tables = cosine_tables(data, k)
    else:
        ease = ease_tables(data, k, l2, max_columns)
        tables = blend_tables(ease, cosine_tables(data, k), cosine_share) if cosine_share > 0 else ease
    if view_share > 0:
        [(_, _, view)] = item_view_tables(data, k, (view_share,), (view_l2,), max_columns // 2)
        tables = with_bundle_tables(tables, view)
    if text_share > 0 and data.item_text.shape[1]:
        tables = blend_tables(tables, text_tables(data, k, (text_gate,))[0], text_share)
    return tables


def item_view_tables(
    data: TrainingData,
    k: int,
    shares: Sequence[float],
    l2s: Sequence[float],
    max_bundles: int = MAX_DENSE_COLUMNS // 2,
) -> Iterator[tuple[float, float, NeighbourTables]]:
    """(share, l2, bundle tables) for each share and L2 (shares outer), of EASE's regression over
    features X = [bundles | share · items · Mᵀ]: each bundle column predicted (its own feature left
    out) from the row's bundles and, for every bundle, how many of its members the row's items are
    (M: bundles × items membership). The item part is linear in the row's items, so it becomes an
    item → bundle table: item i's weight on bundle b is share · Σ over the bundles c holding i of
    the weight of c's item feature on b. The rows are cooccurrence_matrix's; at most `max_bundles`
    bundles (the most frequent) take part, and a bundle nobody has gets no row. Item tables are
    left empty (with_bundle_tables keeps another's). The features are built once, their Gram
    matrix once per share; each L2 inverts a copy."""
    n_items, n_bundles = data.vocabulary.num_item_rows, data.vocabulary.num_bundle_rows
    matrix = cooccurrence_matrix(data)
    bundles = matrix[:, n_items:].tocsc()
    counts = np.asarray(bundles.sum(axis=0)).ravel()
    kept = np.flatnonzero(counts > 0) if n_bundles > FIRST_ID else np.zeros(0, np.int64)
    if len(kept) > max_bundles:
        kept = np.sort(np.argsort(-counts, kind="stable")[:max_bundles])
    if len(kept) == 0:
        for share in shares:
            for l2 in l2s:
                yield share, l2, empty_tables(n_items, n_bundles, k)
        return
    members = data.vocabulary.bundle_members[kept]
    rows = np.broadcast_to(np.arange(len(kept))[:, None], members.shape)[members != PAD]
    membership = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, members[members != PAD])), shape=(len(kept), n_items)
    )
    membership.data[:] = 1.0
    covered = matrix[:, :n_items] @ membership.T  # rows × kept bundles: how many members each row has
    nb = len(kept)
    for share in shares:
        features = sp.hstack([bundles[:, kept], covered * np.float32(share)]).tocsc()
        gram = (features.T @ features).toarray().astype(np.float32)
        through = membership.T.tocsr() * np.float32(share)  # items × kept bundles
        for l2 in l2s:
            tables = empty_tables(n_items, n_bundles, k)
            inverse = _upper_inverse(gram.copy(), l2)
            block = inverse[:nb, :nb]  # the inverse's first nb columns, from its valid upper triangle
            columns = np.concatenate([np.triu(block) + np.triu(block, 1).T, inverse[:nb, nb:].T])
            weights = columns / -inverse.diagonal()[:nb]  # [2 nb, nb]: feature → bundle
            weights[np.arange(nb), np.arange(nb)] = 0.0
            del inverse, block, columns
            _keep_strongest(weights[:nb], kept, n_items + kept, tables.bundle_index, tables.bundle_weight)
            for start in range(0, n_items, _ROWS_PER_CHUNK):
                stop = min(start + _ROWS_PER_CHUNK, n_items)
                item_weights = np.asarray(through[start:stop] @ weights[nb:], dtype=np.float32)
                _keep_strongest(item_weights, kept, np.arange(start, stop), tables.bundle_index, tables.bundle_weight)
            yield share, l2, tables


def with_bundle_tables(tables: NeighbourTables, bundle: NeighbourTables) -> NeighbourTables:
    """`tables` with their bundle tables (every column's bundle neighbours) taken from `bundle`."""
    return tables._replace(bundle_index=bundle.bundle_index, bundle_weight=bundle.bundle_weight)


def text_tables(data: TrainingData, k: int, gates: Sequence[float]) -> list[NeighbourTables]:
    """Per gate: each item column's k nearest items by the cosine of their text embeddings
    (positive only), the weight of target j multiplied by gate / (gate + n_j) for its n_j training
    interactions (gate 0: not multiplied), so that where the data already knows a target,
    co-occurrence speaks for it. One similarity product serves every gate. Items without text
    neither have nor are text neighbours; bundle columns get none."""
    n_items, n_bundles = data.vocabulary.num_item_rows, data.vocabulary.num_bundle_rows
    out = [empty_tables(n_items, n_bundles, k) for _ in gates]
    text = np.zeros((n_items, data.item_text.shape[1]), np.float32)
    text[: len(data.item_text)] = data.item_text
    norms = np.linalg.norm(text, axis=1, keepdims=True)
    unit = np.divide(text, norms, out=np.zeros_like(text), where=norms > 0)
    counts = np.asarray(cooccurrence_matrix(data).sum(axis=0)).ravel()[:n_items].astype(np.float32)
    factors = [gate / (gate + counts) if gate > 0 else np.ones(n_items, np.float32) for gate in gates]
    for factor in factors:
        factor[:FIRST_ID] = 0.0
    for start in range(0, n_items, _ROWS_PER_CHUNK):
        stop = min(start + _ROWS_PER_CHUNK, n_items)
        similarity = np.maximum(unit[start:stop] @ unit.T, 0.0)
        similarity[np.arange(stop - start), np.arange(start, stop)] = 0.0
        for factor, tables in zip(factors, out, strict=True):
            weights = similarity * factor
            _keep_strongest(weights, np.arange(n_items), np.arange(start, stop), tables.item_index, tables.item_weight)
    return out


def cosine_tables(data: TrainingData, k: int) -> NeighbourTables:
    matrix = cooccurrence_matrix(data)
    n_items, n_bundles = data.vocabulary.num_item_rows, data.vocabulary.num_bundle_rows
    tables = empty_tables(n_items, n_bundles, k)
    norms = np.sqrt(np.asarray(matrix.sum(axis=0)).ravel())
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)
    normalised = (matrix @ sp.diags(inverse)).tocsc()
    _fill_cosine(normalised, normalised[:, :n_items], 0, tables.item_index, tables.item_weight)
    if n_bundles > FIRST_ID:
        _fill_cosine(normalised, normalised[:, n_items:], n_items, tables.bundle_index, tables.bundle_weight)
    return tables


def ease_tables(data: TrainingData, k: int, l2: float, max_columns: int = MAX_DENSE_COLUMNS) -> NeighbourTables:
    n_items, n_bundles = data.vocabulary.num_item_rows, data.vocabulary.num_bundle_rows
    tables = empty_tables(n_items, n_bundles, k)
    _fill_ease(cooccurrence_matrix(data), l2, max_columns, n_items, tables)
    return tables


def blend_tables(ease: NeighbourTables, cosine: NeighbourTables, cosine_share: float) -> NeighbourTables:
    """EASE + cosine_share × cosine, each table divided by the root mean square of its weights, and
    each column's k strongest of the sum kept. EASE discounts rare columns (their few
    co-occurrences explain little), cosine favours them (its normalization), so the blend keeps
    the accuracy of the one and most of the other's reach into the long tail."""
    k = ease.item_index.shape[1]
    out = NeighbourTables(*(np.zeros_like(table) for table in ease))
    for kind in ("item", "bundle"):
        e_index, e_weight = getattr(ease, f"{kind}_index"), getattr(ease, f"{kind}_weight")
        if e_index.shape[1] == 0:
            continue
        c_index, c_weight = getattr(cosine, f"{kind}_index"), getattr(cosine, f"{kind}_weight")
        size = int(max(e_index.max(), c_index.max())) + 1
        summed = (_as_matrix(e_index, e_weight, size, 1.0) + _as_matrix(c_index, c_weight, size, cosine_share)).tocoo()
        slot = rank_in_group(summed.row, np.abs(summed.data))
        keep = (slot < k) & (summed.data != 0)
        getattr(out, f"{kind}_index")[summed.row[keep], slot[keep]] = summed.col[keep]
        getattr(out, f"{kind}_weight")[summed.row[keep], slot[keep]] = summed.data[keep]
    return out


def _as_matrix(index: np.ndarray, weight: np.ndarray, size: int, share: float) -> sp.csr_matrix:
    present = weight != 0
    scale = np.sqrt(np.mean(np.square(weight[present]))) if present.any() else 1.0
    rows = np.broadcast_to(np.arange(len(index))[:, None], index.shape)[present]
    data = (weight[present] * (share / scale)).astype(np.float32)
    return sp.csr_matrix((data, (rows, index[present])), shape=(len(index), size))


def cooccurrence_matrix(data: TrainingData) -> sp.csr_matrix:
    """Binary (users + one basket per bundle) × (item rows + bundle rows) matrix, float32."""
    vocabulary = data.vocabulary
    n_items, n_bundles = vocabulary.num_item_rows, vocabulary.num_bundle_rows
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
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(row, n_items + n_bundles))
    matrix.data[:] = 1.0  # repeats count once
    return matrix


def _fill_cosine(
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


def _fill_ease(matrix: sp.csr_matrix, l2: float, max_columns: int, n_items: int, tables: NeighbourTables) -> None:
    """EASE's weights B = -P / diag(P) with P = (XᵀX + l2·I)⁻¹ and a zero diagonal; each source
    column keeps its targets of largest |B| (the negative weights matter as much as the positive)."""
    counts = np.asarray(matrix.sum(axis=0)).ravel()
    kept = np.flatnonzero(counts > 0)
    if len(kept) > max_columns:
        kept = np.sort(np.argsort(-counts, kind="stable")[:max_columns])
    if len(kept) == 0:
        return
    sub = matrix[:, kept].tocsc()
    inverse = _upper_inverse((sub.T @ sub).toarray().astype(np.float32), l2)
    diagonal = inverse.diagonal().copy()
    groups = [(kept < n_items, 0, tables.item_index, tables.item_weight)]
    if tables.bundle_index.shape[1]:
        groups.append((kept >= n_items, n_items, tables.bundle_index, tables.bundle_weight))
    n = len(kept)
    for start in range(0, n, _ROWS_PER_CHUNK):
        stop = min(start + _ROWS_PER_CHUNK, n)
        rows = np.empty((stop - start, n), np.float32)  # rows start..stop of the symmetric inverse
        rows[:, stop:] = inverse[start:stop, stop:]
        rows[:, :start] = inverse[:start, start:stop].T
        block = inverse[start:stop, start:stop]
        rows[:, start:stop] = np.triu(block) + np.triu(block, 1).T
        weights = rows / -diagonal
        weights[np.arange(stop - start), np.arange(start, stop)] = 0.0
        sources = kept[start:stop]
        for is_target, offset, index, weight in groups:
            columns = np.flatnonzero(is_target)
            _keep_strongest(weights[:, columns], kept[columns] - offset, sources, index, weight)


def _upper_inverse(gram: np.ndarray, l2: float) -> np.ndarray:
    """(gram + l2·I)⁻¹ by Cholesky, in gram's memory; only its upper triangle is valid."""
    gram[np.diag_indices_from(gram)] += np.float32(l2)
    factor, info = lapack.spotrf(gram, lower=0, overwrite_a=1, clean=0)
    if info == 0:
        inverse, info = lapack.spotri(factor, lower=0, overwrite_c=1)
    if info != 0:
        raise ValueError(f"EASE: the regularized Gram matrix is not invertible (LAPACK info {info}); raise l2")
    return inverse


def _keep_strongest(
    weights: np.ndarray, targets: np.ndarray, sources: np.ndarray, index: np.ndarray, weight: np.ndarray
) -> None:
    """For each row of `weights` (source column sources[r]; columns are the target rows `targets`),
    writes its k targets of largest |weight|, strongest first, into index and weight."""
    k = index.shape[1]
    if weights.shape[1] > k:
        top = np.argpartition(-np.abs(weights), k - 1, axis=1)[:, :k]
    else:
        top = np.broadcast_to(np.arange(weights.shape[1]), (len(weights), weights.shape[1]))
    values = np.take_along_axis(weights, top, axis=1)
    order = np.argsort(-np.abs(values), axis=1, kind="stable")
    top, values = np.take_along_axis(top, order, axis=1), np.take_along_axis(values, order, axis=1)
    width = top.shape[1]
    present = values != 0
    index[sources, :width] = np.where(present, targets[top], PAD)
    weight[sources, :width] = np.where(present, values, 0.0)
