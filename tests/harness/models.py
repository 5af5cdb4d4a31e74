"""Ranker models for tests: trained for one epoch on a tiny demo shop, exported as the service
loads them, and the models directories the service reads."""

from __future__ import annotations

import copy
import dataclasses
import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

TEXT_DIM = 384  # the sentence encoder's: the candidate service's text vectors feed the text model
NEW_ITEMS = {  # not in the training data; the candidate service's catalogue has them, with their text
    "new-lamp": "Brass desk lamp with a linen shade",
    "new-mug": "Stoneware coffee mug, 350 ml",
}


@dataclass
class Artifacts:
    plain: Path  # the older version: no text, with an int8 export
    text: Path  # the newer version, trained with (random) item text vectors
    poisoned: Path  # the plain model with one bundle's learned row set to NaN
    poisoned_bundle: str
    items: list[str]  # item ids the models know
    bundles: list[str]  # bundle ids the models know


def build_artifacts(root: Path) -> Artifacts:
    torch = pytest.importorskip("torch", reason="training the test models needs the train extra (torch)")
    from bundlerec.datasets import read_dataset
    from bundlerec.datasets.demo import generate_demo_shop
    from bundlerec.training.export import write_model_dir
    from bundlerec.training.train import TrainSettings, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two tiny models: threads would only fight the other jobs of this machine
    generate_demo_shop(root / "shop", seed=1, users=60, items=150)
    dataset = read_dataset(root / "shop")
    quiet = functools.partial(train, progress=lambda _: None)
    plain = quiet(dataset, TrainSettings(max_epochs=1, dim=32), None)
    plain_dir = write_model_dir(plain, root / "models", dataset_name="demo", text_encoder=None, int8=True, curves=False)
    vectors = np.random.default_rng(0).standard_normal((len(dataset.items), TEXT_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texted = quiet(dataset, TrainSettings(max_epochs=1, dim=32, seed=1), vectors)
    text_dir = write_model_dir(
        texted, root / "models", dataset_name="demo", text_encoder={"dimension": TEXT_DIM}, curves=False
    )
    poisoned = copy.deepcopy(plain.model)
    with torch.no_grad():
        poisoned.bundle_id.weight[2] = float("nan")  # bundle row 2: the vocabulary's first bundle
    poisoned_dir = write_model_dir(
        dataclasses.replace(plain, model=poisoned),
        root / "poisoned",
        dataset_name="demo",
        text_encoder=None,
        curves=False,
    )
    torch.set_num_threads(threads)
    vocabulary = plain.data.vocabulary
    return Artifacts(
        plain_dir,
        text_dir,
        poisoned_dir,
        vocabulary.bundle_ids[0],
        list(vocabulary.item_ids),
        list(vocabulary.bundle_ids),
    )


def models_with(directory: Path, *versions: Path) -> Path:
    """A models directory holding copies of `versions` (each published whole, as training does)."""
    directory.mkdir(parents=True, exist_ok=True)
    for version in versions:
        publish(version, directory)
    return directory


def publish(version: Path, models_dir: Path, name: str | None = None) -> Path:
    staging = models_dir / f".{version.name}.copying"
    shutil.copytree(version, staging)
    return staging.rename(models_dir / (name or version.name))
