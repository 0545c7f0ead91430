"""Validate every membership attack on real members vs non-members before trusting it on gray
data (docs/METHOD.md). A SeedCNN is overfit on 2,500 images of a 5,000-image CIFAR-10 (JPEG q75)
subset (25 epochs); the attacks score all 5,000 (2,500 members, 2,500 non-members):

  rule-based            member iff the target predicts the label (a binary score)
  black-box (ART nn)    fitted on one half of members/non-members, scored on the other, swapped
  shadow (Shokri)       16 shadow models, one global attack network
  LiRA online/offline   the same 16 shadows, each trained on a balanced random half of the pool

  python experiments/membership_validation.py [--pool 5000 --epochs 25 --shadows 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


from drift_jax import data, membership, runtime, stack  # noqa: E402
from drift_jax.config import TrainConfig  # noqa: E402
from drift_jax.files import atomic_write_json  # noqa: E402
from drift_jax.models import ModelSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--shadows", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/experiments")
    args = parser.parse_args()
    t0 = time.perf_counter()
    full = data.load("tfds:cifar10:train")
    (pool,) = data.stratified_split(full.labels, [args.pool / len(full)], args.seed)
    ds = full.subset(pool, "cifar10-subset")
    members_mask = np.zeros(len(ds), bool)
    members_mask[data.stratified_split(ds.labels, [0.5], args.seed + 1)[0]] = True
    members = np.flatnonzero(members_mask)
    spec = ModelSpec("seedcnn", 10, ds.image_shape)
    recipe = TrainConfig(epochs=args.epochs, batch_size=64)
    key = jax.random.key(args.seed)
    k_target, k_shadow, k_bb, k_attack = jax.random.split(key, 4)
    target = stack.train_stack(spec, stack.init_stack(spec, jax.random.split(k_target, 1)),
                               ds.images, ds.labels, [members], recipe, k_target).variables
    acc = stack.evaluate_stack(spec, target, ds.images, ds.labels)
    context = lambda m, n, key, shadows=None: membership.AttackContext(
        spec, target, ds.images, ds.labels, m, n, key, shadows)
    everyone = context(members, np.flatnonzero(~members_mask), k_attack)
    hit = np.asarray(membership.RuleBased().fit(everyone).score(ds.images, ds.labels).decision)
    print(f"target: train acc {hit[members_mask].mean():.3f}, "
          f"non-member acc {hit[~members_mask].mean():.3f}", flush=True)
    scores = {"rule_based": hit.astype(float)}
    timings = {}

    # Black-box: 2-fold cross-fitting so every image is scored by an attack that never saw it.
    start = time.perf_counter()
    halves = data.stratified_split(members_mask.astype(int), [0.5, 0.5], args.seed + 2, 2)
    bb = np.zeros(len(ds))
    for fit_half, score_half in (halves, halves[::-1]):
        m, n = fit_half[members_mask[fit_half]], fit_half[~members_mask[fit_half]]
        attack = membership.BlackBox().fit(context(m, n, k_bb))
        bb[score_half] = attack.score(ds.images[score_half], ds.labels[score_half]).probability
    scores["black_box"] = bb
    timings["black_box"] = time.perf_counter() - start

    start = time.perf_counter()
    shadows = membership.train_shadows(spec, ds.images, ds.labels, np.arange(len(ds)),
                                       args.shadows, recipe, k_shadow, progress=True)
    timings["train_shadows"] = time.perf_counter() - start
    start = time.perf_counter()
    with_shadows = dataclasses.replace(everyone, shadows=shadows)
    shadow_attack = membership.ShadowModels().fit(with_shadows)
    scores["shadow"] = shadow_attack.score(ds.images, ds.labels).probability
    timings["shadow_attack"] = time.perf_counter() - start
    lira = membership.LiRA().fit(with_shadows)
    for variant in ("online", "offline"):
        scores[f"lira_{variant}"] = lira.score_pool(variant)[0]
    lira.fix_variance = True
    scores["lira_online_fixed_variance"] = lira.score_pool("online")[0]

    table = {name: membership.attack_metrics(s, members_mask) for name, s in scores.items()}
    print("| attack | AUC | TPR@1%FPR | TPR@0.1%FPR |\n|---|---|---|---|")
    for name, m in table.items():
        print(f"| {name} | {m['auc']:.3f} | {m['tpr_at_1pct_fpr']:.3f} | "
              f"{m['tpr_at_0.1pct_fpr']:.3f} |")
    atomic_write_json(Path(args.out) / "membership_validation.json", {
        "config": vars(args), "target_holdout_accuracy": float(hit[~members_mask].mean()),
        "target_train_accuracy": float(hit[members_mask].mean()),
        "evaluate": acc["accuracy"], "attacks": table, "seconds": timings,
        "total_seconds": time.perf_counter() - t0, "environment": runtime.environment()})


if __name__ == "__main__":
    main()
