"""From a dataset in the import format to training examples for the ranker.

The vocabulary holds every item and bundle that has training signal: items seen in events, bundles
seen in events, and the members of those bundles. Everything else reaches the model through its
text only, which is how the model scores what it never saw.

Two regimes (TrainSettings.order; "auto" picks by the dataset's timestamps):
- sequence (timestamps are real times, e.g. sessions): each user's history is read causally and
  every step learns to predict the next (as SASRec does); the user token predicts the last one;
- set (timestamps only an order, or none, as in Youshu): each example leaves a random share of the
  interactions out and predicts each of them from the rest.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from bundlerec.datasets import Dataset, HeldOut
from bundlerec.evaluation.protocol import Step as HistoryStep
from bundlerec.evaluation.protocol import event_histories
from bundlerec.ranking.features import EVENT_TYPE_INDEX, PAD, UNKNOWN, Step, collapse_repeats, encode_sequence
from bundlerec.ranking.vocabulary import Vocabulary

ITEM, BUNDLE = 1, 2  # target kinds (0 = no target at this position)


@dataclass
class TrainingData:
    vocabulary: Vocabulary
    item_text: np.ndarray  # [num_item_rows, text_dim] float32; zero rows where there is no text
    histories: dict[str, list[Step]]  # model indices, oldest first
    task: str
    causal: bool
    clock: bool

    def target_counts(self) -> dict[int, np.ndarray]:
        """Training interactions per item row and per bundle row."""
        items = np.zeros(self.vocabulary.num_item_rows, dtype=np.int64)
        bundles = np.zeros(self.vocabulary.num_bundle_rows, dtype=np.int64)
        for steps in self.histories.values():
            for step in steps:
                if step.bundle:
                    bundles[step.bundle] += 1
                else:
                    items[step.item] += 1
        return {ITEM: items, BUNDLE: bundles}

    @property
    def target_kind(self) -> int:
        return BUNDLE if self.task == "bundle" else ITEM


def model_steps(
    steps: Iterable[HistoryStep], vocabulary: Vocabulary, item_index: Callable[[str], int], *, timed: bool
) -> list[Step]:
    """A history of ids (evaluation.protocol) as model steps. Bundles the model has no row for are
    left out; `item_index` maps an item id (the vocabulary's, or one that also knows extra-text
    rows). Datasets without timestamps get one shared timestamp, so no step looks newer."""
    out = []
    for s in steps:
        stamp = s.timestamp if timed else 0
        if s.target_type == "bundle":
            bundle = vocabulary.bundle(s.target_id)
            if bundle > UNKNOWN:
                out.append(Step(PAD, bundle, EVENT_TYPE_INDEX[s.event_type], stamp))
        else:
            out.append(Step(item_index(s.target_id), PAD, EVENT_TYPE_INDEX[s.event_type], stamp))
    return out


def history_steps(
    dataset: Dataset, vocabulary: Vocabulary, histories: dict[str, list[HistoryStep]] | None = None
) -> dict[str, list[Step]]:
    """Each user's events (or the given `histories`) as model steps, oldest first (ties keep file
    order), repeats collapsed as encode_sequence does at serving."""
    timed = dataset.info.timestamps != "none"
    return {
        user: collapse_repeats(model_steps(steps, vocabulary, vocabulary.item, timed=timed))
        for user, steps in (event_histories(dataset) if histories is None else histories).items()
    }


def build_vocabulary(dataset: Dataset, max_members: int) -> Vocabulary:
    bundles_seen = {e.target_id for e in dataset.events if e.target_type == "bundle"}
    items_seen = {e.target_id for e in dataset.events if e.target_type == "item"}
    for bundle_id in bundles_seen:
        items_seen.update(dataset.bundles[bundle_id].item_ids)
    item_ids = [item for item in dataset.items if item in items_seen]
    bundles = {b.bundle_id: b.item_ids for b in dataset.bundles.values() if b.bundle_id in bundles_seen}
    return Vocabulary.build(item_ids, bundles, max_members)


def prepare(dataset: Dataset, text_vectors: np.ndarray | None, max_members: int, order: str = "auto") -> TrainingData:
    """`text_vectors` is [len(dataset.items), text_dim] in items.csv order, or None; `order` is
    TrainSettings.order."""
    if order not in ("auto", "sequence", "set"):
        raise ValueError(f"order must be auto, sequence or set, got {order!r}")
    vocabulary = build_vocabulary(dataset, max_members)
    text_dim = 0 if text_vectors is None else text_vectors.shape[1]
    item_text = np.zeros((vocabulary.num_item_rows, max(text_dim, 1)), dtype=np.float32)
    if text_vectors is not None:
        for position, item_id in enumerate(dataset.items):
            if vocabulary.has_item(item_id):
                item_text[vocabulary.item(item_id)] = text_vectors[position]
    return TrainingData(
        vocabulary=vocabulary,
        item_text=item_text[:, :text_dim] if text_dim else item_text[:, :0],
        histories=history_steps(dataset, vocabulary),
        task=dataset.info.task,
        causal=order == "sequence" or (order == "auto" and dataset.info.timestamps == "unix"),
        clock=dataset.info.timestamps == "unix",
    )


def carve_validation(dataset: Dataset, share: float, seed: int) -> Dataset:
    """A dataset without valid.csv still needs a validation split to stop on: the newest target of
    a `share` of the users with at least two targets moves from events to valid."""
    kind = "bundle" if dataset.info.task == "bundle" else "item"
    by_user: dict[str, list[int]] = defaultdict(list)
    for n, event in enumerate(dataset.events):
        if event.target_type == kind:
            by_user[event.user_id].append(n)
    rng = random.Random(seed)
    eligible = sorted(user for user, rows in by_user.items() if len(rows) >= 2)
    chosen = rng.sample(eligible, max(1, int(len(eligible) * share))) if eligible else []
    newest = sorted(max(by_user[user], key=lambda n: (dataset.events[n].timestamp, n)) for user in chosen)
    valid = [HeldOut(dataset.events[n].user_id, dataset.events[n].target_id) for n in newest]
    # every event of the user on that target leaves the history (the views before the purchase
    # too), or the protocol would mask the positive out of the ranking
    held = {(row.user_id, row.target_id) for row in valid}
    events = [e for e in dataset.events if (e.user_id, e.target_id) not in held]
    return dataclasses.replace(dataset, events=events, valid=valid)


@dataclass
class Batch:
    """A batch of examples and what they predict, flattened: prediction n is made by example
    rows[n] at position positions[n] (L, the user token, or a step for causal examples)."""

    seq: np.ndarray  # [B, 5, L]
    rows: np.ndarray  # [T]
    positions: np.ndarray  # [T] in 0..L
    kinds: np.ndarray  # [T] ITEM or BUNDLE
    targets: np.ndarray  # [T] the item or bundle row predicted


Example = tuple[list[Step], list[Step]]  # (input steps, predicted steps)


def examples(data: TrainingData, length: int, rng: random.Random, mask_share: float = 0.2) -> list[Example]:
    """One epoch of examples, one per user.

    Ordered: the whole history, position i predicting step i+1 (as SASRec trains).
    Unordered: a random `mask_share` of the user's interactions (at least one of the target kind)
    leaves the history and the user token predicts each of them from the rest, as a denoising
    autoencoder does (Mult-DAE, Liang et al., WWW 2018); every target interaction is predicted
    about once in 1/mask_share epochs, and one encoding serves all of a user's predictions."""
    out = []
    for user in sorted(data.histories):
        steps = data.histories[user]
        if data.causal:
            window = steps[-(length + 1) :]
            # a single step is still an example: the user token learns what a newcomer picks first
            out.append((window[:-1], window[1:]) if len(window) > 1 else ([], window))
            continue
        targets = [n for n, s in enumerate(steps) if _kind(s) == data.target_kind]
        others = [n for n, s in enumerate(steps) if _kind(s) != data.target_kind]
        chosen = set(rng.sample(targets, max(1, round(mask_share * len(targets)))) if targets else [])
        chosen.update(n for n in others if rng.random() < mask_share)
        if not chosen:
            continue
        rest = [s for n, s in enumerate(steps) if n not in chosen][-length:]  # the newest, as serving keeps
        out.append((rest, [steps[n] for n in sorted(chosen)]))
    rng.shuffle(out)
    return out


def batches(pairs: list[Example], size: int, rng: random.Random) -> list[list[Example]]:
    """Groups examples of similar history length into batches (in a random order), so a batch is
    padded to its own longest history rather than the model's maximum: most histories are short."""
    ordered = sorted(pairs, key=lambda pair: len(pair[0]))  # stable: ties keep the shuffled order
    grouped = [ordered[start : start + size] for start in range(0, len(ordered), size)]
    rng.shuffle(grouped)
    return grouped


def make_batch(pairs: list[Example], length: int, *, clock: bool, causal: bool) -> Batch:
    """Pads to the batch's longest history, at most `length`. Causal: input step j predicts
    predicted[j] (the step after it) and the user token predicts the last one too. Unordered: the
    user token predicts every predicted step."""
    length = max(1, min(length, max(len(inputs) for inputs, _ in pairs)))
    seq = np.stack([encode_sequence(inputs, length, clock=clock) for inputs, _ in pairs])
    flat: list[tuple[int, int, int, int]] = []
    for row, (inputs, predicted) in enumerate(pairs):
        if causal:
            placed = [*zip(range(length - len(inputs), length), predicted, strict=False), (length, predicted[-1])]
        else:
            placed = [(length, step) for step in predicted]
        flat.extend((row, position, _kind(step), step.bundle or step.item) for position, step in placed)
    rows, positions, kinds, targets = (np.array(column, dtype=np.int64) for column in zip(*flat, strict=True))
    return Batch(seq, rows, positions, kinds, targets)


def _kind(step: Step) -> int:
    return BUNDLE if step.bundle != PAD else ITEM
