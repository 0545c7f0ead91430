"""SeedCNN on the base half, as the original protocol trains it (docs/METHOD.md, steps 1-2).

  CIFAR-10 (JPEG q75): train split halved (25,000 base images), 3 epochs, batch 64, Adam 1e-3;
    holdout = the 10,000-image test split. Original work: 0.5738; PyTorch, same recipe: ~0.60.
  MNIST test split (offline stand-in for EMNIST): 8,000 / 2,000 stratified, base half 4,000,
    5 epochs; holdout = the 2,000.

  python experiments/train_seedcnn.py --dataset cifar10 --seeds 0 1 2 --out runs/seedcnn
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from drift_jax import data, runtime, stack
from drift_jax.config import TrainConfig
from drift_jax.files import atomic_write_json
from drift_jax.models import ModelSpec

PROTOCOLS = {
    "cifar10": {"epochs": 3, "target": 0.55},
    "mnist": {"epochs": 5, "target": 0.95},
}


def load(name: str, seed: int):
    """(dataset, base indices, holdout indices) for the protocol's split."""
    if name == "cifar10":
        train = data.load("tfds:cifar10:train")
        test = data.load("tfds:cifar10:test")
        full = data.Dataset(np.concatenate([train.images, test.images]),
                            np.concatenate([train.labels, test.labels]), train.class_names,
                            "cifar10-jpeg-q75")
        base, _ = data.stratified_split(train.labels, [0.5, 0.5], seed)
        return full, base, np.arange(len(train), len(full))
    ds = data.load("tfds:mnist:test")
    base, _, holdout = data.base_production_holdout(ds.labels, seed, holdout_fraction=0.2)
    return ds, base, holdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(PROTOCOLS), default="cifar10")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="runs/seedcnn")
    args = parser.parse_args()
    protocol = PROTOCOLS[args.dataset]
    rows = []
    for seed in args.seeds:
        ds, base, holdout = load(args.dataset, seed)
        spec = ModelSpec("seedcnn", ds.num_classes, ds.image_shape)
        variables = stack.init_stack(spec, jax.random.split(jax.random.key(seed), 1))
        result = stack.train_stack(spec, variables, ds.images, ds.labels, [base],
                                   TrainConfig(epochs=protocol["epochs"], batch_size=64),
                                   jax.random.key(seed + 1000))
        ev = stack.evaluate_stack(spec, result.variables, ds.images[holdout], ds.labels[holdout])
        rows.append({"seed": seed, "base_size": int(len(base)), "holdout_size": int(len(holdout)),
                     "holdout_accuracy": ev["accuracy"][0], "train_seconds": result.seconds,
                     "images_per_second": len(base) * protocol["epochs"] / result.seconds,
                     "execution": result.execution.__dict__})
        print(f"{args.dataset} seed {seed}: holdout accuracy {ev['accuracy'][0]:.4f}, "
              f"train {result.seconds:.1f} s ({rows[-1]['images_per_second']:.0f} img/s)")
    accs = [r["holdout_accuracy"] for r in rows]
    summary = {"dataset": args.dataset, "protocol": protocol, "runs": rows,
               "mean_holdout_accuracy": float(np.mean(accs)),
               "target_met": bool(min(accs) >= protocol["target"]),
               "environment": runtime.environment()}
    atomic_write_json(Path(args.out) / f"{args.dataset}.json", summary)
    print(f"mean {np.mean(accs):.4f} (target >= {protocol['target']}) -> {args.out}/")


if __name__ == "__main__":
    main()
