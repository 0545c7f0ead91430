"""Transfer rate of gray data: the fraction of one model's inverted images that an independently
trained model (same data distribution, another seed) classifies as the target class. Steps 5-6
of the method lean on it. Both inversion modes, on digits, the MNIST test split and CIFAR-10
(JPEG q75); SeedCNNs trained as one stack of three (models 0 and 1 inverted, model 2 the judge).

  python experiments/inversion_transfer.py [--datasets digits mnist cifar10] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_seedcnn import load  # noqa: E402

from drift_jax import data, figures, inversion, runtime, stack  # noqa: E402
from drift_jax.config import TrainConfig  # noqa: E402
from drift_jax.files import atomic_write_json  # noqa: E402
from drift_jax.inversion import InversionConfig, MIFaceConfig, RegularizedConfig  # noqa: E402
from drift_jax.models import ModelSpec  # noqa: E402

EPOCHS = {"digits": 10, "mnist": 5, "cifar10": 3}
# Digits are not mirror-symmetric: no flips there; jitter scaled to the image size.
AUGMENT = {"digits": dict(jitter=1, flip=False), "mnist": dict(jitter=2, flip=False),
           "cifar10": dict(jitter=2, flip=True)}


def dataset(name: str, seed: int):
    if name == "digits":
        ds = data.digits()
        base, _, holdout = data.base_production_holdout(ds.labels, seed)
        return ds, base, holdout
    return load(name, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist", "cifar10"])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    parser.add_argument("--out", default="benchmarks/experiments")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    rows = {}
    out = Path(args.out)
    for name in args.datasets:
        methods = {
            # The original protocol: zeros start, 10,000 steps, one image per class (a zeros
            # start is deterministic, so more samples would be copies).
            "miface": InversionConfig(method="miface", samples_per_class=1, miface=MIFaceConfig(
                max_iter=500 if args.quick else 10_000)),
            "regularized": InversionConfig(method="regularized", samples_per_class=8,
                                           regularized=RegularizedConfig(
                                               steps=200 if args.quick else 2000,
                                               **AUGMENT[name])),
        }
        ds, base, holdout = dataset(name, seed=0)
        spec = ModelSpec("seedcnn", ds.num_classes, ds.image_shape)
        v = stack.init_stack(spec, jax.random.split(jax.random.key(0), 3))
        trained = stack.train_stack(spec, v, ds.images, ds.labels, [base] * 3,
                                    TrainConfig(epochs=EPOCHS[name]), jax.random.key(1)).variables
        acc = stack.evaluate_stack(spec, trained, ds.images[holdout], ds.labels[holdout])
        inverters, judge = stack.member(trained, slice(0, 2)), stack.member(trained, slice(2, 3))
        rows[name] = {"holdout_accuracy": acc["accuracy"]}
        for method, cfg in methods.items():
            gray = inversion.invert(spec, inverters, range(ds.num_classes), cfg,
                                    jax.random.key(2))
            by_judge = inversion.transfer_rate(spec, judge, gray)[0]
            cross = inversion.transfer_rate(spec, inverters, gray)  # [judge, inverter]
            rows[name][method] = {
                "transfer_rate_independent_judge": float(by_judge.mean()),
                "transfer_rate_cross_pair": float((cross[0, 1] + cross[1, 0]) / 2),
                "self_confidence": float(gray.confidence.mean()),
                "seconds": gray.seconds, "iterations": cfg.iterations,
                "samples_per_class": cfg.samples_per_class}
            figures.gray_grid(out / f"gray_{name}_{method}.png", gray.images,
                              list(ds.class_names), title=f"{name}: {method}")
            print(f"{name} {method}: transfer {by_judge.mean():.3f} (judge), "
                  f"{rows[name][method]['transfer_rate_cross_pair']:.3f} (cross), self-confidence "
                  f"{gray.confidence.mean():.3f}, {gray.seconds:.1f} s", flush=True)
    atomic_write_json(out / "inversion_transfer.json",
                      {"results": rows, "quick": args.quick, "environment": runtime.environment()})
    print("| dataset | MIFace parity | regularised |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['miface']['transfer_rate_independent_judge']:.3f} | "
              f"{r['regularized']['transfer_rate_independent_judge']:.3f} |")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
