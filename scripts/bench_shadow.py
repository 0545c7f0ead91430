"""Shadow-model benchmarks; writes benchmarks/shadow.json and the shadow section of BENCHMARKS.md.

  (a) 16 SeedCNN shadow models trained as one stack against 16 trained one after another with the
      same code (`stack.train_stack` with one member), same data and recipe.
  (b) with the `bench` extra: IBM ART's ShadowModels (16 PyTorch SeedCNNs, trained one after
      another by ``PyTorchClassifier.fit``: 10 epochs, batch 128, Adam 1e-3) plus
      ``MembershipInferenceBlackBox.fit`` against ours (`membership.ShadowModels.fit`) on the
      same pool and recipe, side by side.

  python scripts/bench_shadow.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import machine, update_section  # noqa: E402

from drift_jax import data, execution, membership, stack  # noqa: E402
from drift_jax.config import TrainConfig  # noqa: E402
from drift_jax.files import atomic_write_json  # noqa: E402
from drift_jax.models import ModelSpec  # noqa: E402

K = 16


def ours_stack_vs_sequential(ds, spec, recipe) -> dict:
    pool = np.arange(len(ds))
    warm = dataclasses.replace(recipe, epochs=1)
    membership.train_shadows(spec, ds.images, ds.labels, pool, K, warm,
                             jax.random.key(1))  # compile
    one = lambda k: stack.init_stack(spec, jax.random.split(jax.random.key(k), 1))
    stack.train_stack(spec, one(0), ds.images, ds.labels, [pool[: len(pool) // 2]], warm,
                      jax.random.key(1), progress=False)  # compile
    start = time.perf_counter()
    shadows = membership.train_shadows(spec, ds.images, ds.labels, pool, K, recipe,
                                       jax.random.key(2))
    jax.block_until_ready(shadows.variables)
    stacked = time.perf_counter() - start
    keep = shadows.keep[0]
    start = time.perf_counter()
    for k in range(K):
        jax.block_until_ready(stack.train_stack(
            spec, one(k), ds.images, ds.labels, [np.flatnonzero(keep[k])], recipe,
            jax.random.key(3 + k), progress=False).variables)
    sequential = time.perf_counter() - start
    images = int(keep.sum()) * recipe.epochs
    return {"stack_seconds": stacked, "sequential_seconds": sequential,
            "speedup": sequential / stacked, "model_images": images,
            "stack_model_images_per_second": images / stacked,
            "execution": execution.resolve_execution(recipe.execution).__dict__}


def ours_full(ds, spec, target, recipe) -> dict:
    start = time.perf_counter()
    shadows = membership.train_shadows(spec, ds.images, ds.labels, np.arange(len(ds)), K,
                                       recipe, jax.random.key(4))
    jax.block_until_ready(shadows.variables)
    shadow_seconds = time.perf_counter() - start
    none = np.zeros(0, int)  # the shadow attack learns from its shadows only
    context = membership.AttackContext(spec, target, ds.images, ds.labels, none, none,
                                       jax.random.key(5), shadows)
    attack = membership.ShadowModels().fit(context)
    return {"seconds": time.perf_counter() - start, "shadow_seconds": shadow_seconds,
            "attack_epochs": attack.models.epochs_trained}


def art_full(ds, recipe) -> dict:
    try:
        import torch
        from art.attacks.inference.membership_inference import (
            MembershipInferenceBlackBox,
            ShadowModels,
        )
        from art.estimators.classification import PyTorchClassifier
    except ImportError as e:
        return {"error": f"needs the bench extra ({e})"}
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)

    def classifier():
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(64 * 8 * 8, 128), torch.nn.ReLU(),
            torch.nn.Linear(128, 10))
        return PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32),
                                 nb_classes=10, clip_values=(0.0, 1.0),
                                 optimizer=torch.optim.Adam(net.parameters(), 1e-3))

    x = ds.images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    y = np.eye(10, dtype=np.float32)[ds.labels]
    target = classifier()
    target.fit(x, y, batch_size=recipe.batch_size, nb_epochs=recipe.epochs)
    start = time.perf_counter()
    shadows = ShadowModels(classifier(), num_shadow_models=K, random_state=0)
    (mx, my, mp), (nx, ny, n_p) = shadows.generate_shadow_dataset(x, y)
    shadow_seconds = time.perf_counter() - start
    attack = MembershipInferenceBlackBox(target, attack_model_type="nn")
    attack.fit(mx, my, nx, ny, mp, n_p)
    import art

    return {"seconds": time.perf_counter() - start, "shadow_seconds": shadow_seconds,
            "art": art.__version__, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "shadow.json"))
    args = parser.parse_args()
    n = 400 if args.quick else 2000
    ds = data.synthetic(n=n, classes=10, size=32, channels=3, seed=0)
    spec = ModelSpec("seedcnn", 10, ds.image_shape)
    # ART's ShadowModels trains with PyTorchClassifier.fit's defaults: 10 epochs, batch 128.
    recipe = TrainConfig(epochs=2 if args.quick else 10, batch_size=128)
    r: dict = {"machine": machine(),
               "pool": n, "shadows": K, "recipe": {"epochs": recipe.epochs,
                                                   "batch_size": recipe.batch_size}}
    print("(a) stack vs sequential ...", flush=True)
    r["a_stack_vs_sequential"] = ours_stack_vs_sequential(ds, spec, recipe)
    print(f"  {r['a_stack_vs_sequential']}", flush=True)
    print("(b) ART ShadowModels + MembershipInferenceBlackBox.fit vs ours ...", flush=True)
    target = stack.train_stack(spec, stack.init_stack(spec, jax.random.split(jax.random.key(9),
                                                                             1)),
                               ds.images, ds.labels, [np.arange(n)], recipe, jax.random.key(9),
                               progress=False).variables
    b_ours = ours_full(ds, spec, target, recipe)
    b_art = art_full(ds, recipe)
    r["b_vs_art"] = {"ours": b_ours, "art": b_art}
    if "error" not in b_art:
        r["b_vs_art"]["speedup"] = b_art["seconds"] / b_ours["seconds"]
        r["b_vs_art"]["shadow_training_speedup"] = b_art["shadow_seconds"] / b_ours[
            "shadow_seconds"]
    print(f"  {r['b_vs_art']}", flush=True)
    out = atomic_write_json(args.out, r)
    write_markdown(r)
    print(f"wrote {out} and BENCHMARKS.md")


def write_markdown(r: dict) -> None:
    m, a, b = r["machine"], r["a_stack_vs_sequential"], r["b_vs_art"]
    art_s = (f"{b['art']['seconds']:.1f} s (shadows {b['art']['shadow_seconds']:.1f} s)"
             if "error" not in b["art"] else b["art"]["error"])
    lines = [
        f"Machine: {m['processor']}, {m['cpu_count']} cores, {m['backend']}, jax {m['jax']}; "
        f"`python scripts/bench_shadow.py`: {r['shadows']} SeedCNN shadows on a pool of "
        f"{r['pool']} 32x32x3 images (each on a balanced half), {r['recipe']['epochs']} epochs, "
        f"batch {r['recipe']['batch_size']}.", "",
        "| task | ours | other | ratio |", "|---|---|---|---|",
        f"| (a) 16 shadows as one stack vs 16 sequential trainings (same code) | "
        f"{a['stack_seconds']:.1f} s | {a['sequential_seconds']:.1f} s | "
        f"**{a['speedup']:.2f}x** |",
        f"| (b) shadows + attack fit vs ART ShadowModels + MembershipInferenceBlackBox.fit | "
        f"{b['ours']['seconds']:.1f} s (shadows {b['ours']['shadow_seconds']:.1f} s) | {art_s} | "
        f"**{b.get('speedup', float('nan')):.2f}x** |"]
    update_section("bench_shadow", "Shadow models (`scripts/bench_shadow.py`)", lines)


if __name__ == "__main__":
    main()
