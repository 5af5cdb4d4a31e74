"""A plain SASRec on next-item data, scored by the same harness as `bundlerec evaluate`: the
reference our Transformer alone is measured against (issue 18, goal 2).

    python bench/sasrec_reference.py --data ../shared/data/amazon-beauty [--epochs 20] [--lr 1e-3]

SASRec (Kang & McAuley, ICDM 2018) as the full-ranking papers train it: item embeddings shared
with the output, learned positions, 2 pre-norm self-attention blocks of 2 heads, d = 64, the newest
50 steps, dropout 0.5, Adam at 1e-3, batches of 256 users, every step predicting the next with a
softmax over the whole catalogue. Nothing is tuned: no early stopping (validation is printed every
5 epochs), no refit with the validation rows. Popularity is scored in the same run as the floor.
This is a measurement, not part of the product: ours must reach what this reaches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bundlerec.datasets import read_dataset
from bundlerec.evaluation.baselines import fit_popularity
from bundlerec.evaluation.metrics import evaluate_scorer
from bundlerec.evaluation.protocol import EvalSplit, build_split

LENGTH, DIM = 50, 64


class SASRec(nn.Module):
    def __init__(self, items: int) -> None:
        super().__init__()
        self.item = nn.Embedding(items + 1, DIM, padding_idx=0)
        self.position = nn.Embedding(LENGTH, DIM)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(DIM, 2, DIM, 0.5, batch_first=True, norm_first=True) for _ in range(2)
        )
        self.norm = nn.LayerNorm(DIM)
        self.drop = nn.Dropout(0.5)
        nn.init.normal_(self.item.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)
        self.register_buffer("causal", torch.triu(torch.ones(LENGTH, LENGTH, dtype=torch.bool), 1))

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        """steps [B, LENGTH] item rows, left-padded with 0 → states [B, LENGTH, d]. Padding is
        zeroed after every block (SASRec's timeline mask) rather than masked as keys, so no query
        is left without a key to attend to."""
        present = (steps != 0).unsqueeze(-1).float()
        x = self.drop(self.item(steps) + self.position.weight) * present
        for block in self.blocks:
            x = block(x, src_mask=self.causal) * present
        return self.norm(x)


def sequences(split: EvalSplit, users: list[str], row: dict[str, int]) -> np.ndarray:
    out = np.zeros((len(users), LENGTH), dtype=np.int64)
    for n, user in enumerate(users):
        steps = [row[s.target_id] for s in split.histories.get(user, []) if s.target_id in row][-LENGTH:]
        if steps:
            out[n, LENGTH - len(steps) :] = steps
    return out


class Scorer:
    name = "sasrec"

    def __init__(self, model: SASRec, row: dict[str, int]) -> None:
        self.model, self.row = model, row

    @torch.inference_mode()
    def score(self, split: EvalSplit, users: list[str]) -> np.ndarray:
        self.model.eval()
        states = self.model(torch.from_numpy(sequences(split, users, self.row)))[:, -1]
        return (states @ self.model.item.weight[1:].T).numpy()  # rows 1.. are split.target_ids in order


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a next-item dataset in the import format")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dataset = read_dataset(args.data)
    if dataset.info.task != "next_item":
        print("a next-item dataset is needed", file=sys.stderr)
        return 2
    valid, test = build_split(dataset, "valid"), build_split(dataset, "test")
    row = {item: n + 1 for n, item in enumerate(valid.target_ids)}
    users = sorted(u for u, steps in valid.histories.items() if len(steps) >= 2)
    train = sequences(valid, users, row)  # events.csv only: each step predicts the next
    model = SASRec(len(row))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scorer = Scorer(model, row)
    rng = np.random.default_rng(args.seed)
    for epoch in range(1, args.epochs + 1):
        model.train()
        started, total = time.monotonic(), 0.0
        order = rng.permutation(len(train))
        for start in range(0, len(train), 256):
            batch = torch.from_numpy(train[order[start : start + 256]])
            inputs = F.pad(batch[:, :-1], (1, 0))  # each step predicts the one after it
            targets = batch[:, 1:]
            states = model(inputs)[:, 1:]
            predicting = (targets != 0) & (inputs[:, 1:] != 0)
            logits = states[predicting] @ model.item.weight.T
            logits[:, 0] = float("-inf")
            loss = F.cross_entropy(logits, targets[predicting])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        line = f"epoch {epoch:3d}  loss {total:.1f}  {time.monotonic() - started:.0f} s"
        if epoch % 5 == 0 or epoch == args.epochs:
            figures = evaluate_scorer(valid, scorer, ks=(10,))
            line += f"  valid HR@10 {figures['HR@10']:.4f} NDCG@10 {figures['NDCG@10']:.4f}"
        print(line, flush=True)
    for name, found in (("sasrec", scorer), ("popularity", fit_popularity(test))):
        figures = evaluate_scorer(test, found, ks=(10,))
        print(f"test {name}: HR@10 {figures['HR@10']:.4f} NDCG@10 {figures['NDCG@10']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
