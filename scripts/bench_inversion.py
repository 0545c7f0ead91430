"""Inversion benchmarks (MIFace parity mode); writes benchmarks/inversion.json and the inversion
section of BENCHMARKS.md.

  (a) the compiled stack against the per-sample reference loop (tests/miface_reference.py: ART's
      loop at batch 1 with a jitted gradient step; same math, same iterations): 2 SeedCNNs x 10
      classes x 8 samples x 200 iterations on 32x32x3. The reference runs a subset of the samples
      (per image-iteration cost does not depend on which), reported per image-iteration.
  (b) with the `bench` extra (torch==2.13.0, adversarial-robustness-toolbox==1.20.1): ART's own
      MIFace on a PyTorch SeedCNN against ours, same task and iteration count.
  (c) the original protocol's whole inversion step, 2 models x 10 classes x 1 sample x 10,000
      iterations: image-iterations/s and achieved GFLOP/s as a fraction of the conv
      forward+backward rate measured in the same run.

  python scripts/bench_inversion.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))  # the reference loop the tests own
sys.path.insert(0, str(ROOT))

import miface_reference  # noqa: E402
from bench_common import conv_rate, machine, update_section  # noqa: E402

from drift_jax import stack  # noqa: E402
from drift_jax.files import atomic_write_json  # noqa: E402
from drift_jax.inversion import InversionConfig, MIFaceConfig, invert  # noqa: E402
from drift_jax.models import ModelSpec  # noqa: E402

SPEC = ModelSpec("seedcnn", 10, (32, 32, 3))


def ours(variables, samples: int, iterations: int, warm_up: bool = True) -> dict:
    # Grey start: with freshly initialised weights (zero biases) a zeros start is a dead start.
    cfg = InversionConfig(samples_per_class=samples,
                          miface=MIFaceConfig(max_iter=iterations, init="grey"))
    if warm_up:
        invert(SPEC, variables, range(10), cfg, jax.random.key(0), progress=False)  # compile
    gray = invert(SPEC, variables, range(10), cfg, jax.random.key(0), progress=False)
    n = stack.stack_size(variables) * 10 * samples * iterations
    return {"seconds": gray.seconds, "image_iterations": n,
            "image_iterations_per_second": n / gray.seconds, "compiles": gray.compiles}


def reference(variables, samples: int, iterations: int) -> dict:
    module = SPEC.build()
    start, n = None, 0
    for m in range(stack.stack_size(variables)):
        v = stack.member(variables, m)
        fns = miface_reference.make_fns(lambda x, v=v: module.apply(v, x))
        miface_reference.miface_one(fns, np.full(SPEC.image_shape, 0.5), 0, max_iter=2)
        start = start or time.perf_counter()
        for c in range(10):
            for _ in range(samples):
                _, steps = miface_reference.miface_one(fns, np.full(SPEC.image_shape, 0.5), c,
                                                       max_iter=iterations)
                n += steps
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "image_iterations": n, "image_iterations_per_second": n / seconds}


def art_miface(samples: int, iterations: int, models: int = 2) -> dict:
    try:
        import torch
        from art.attacks.inference.model_inversion import MIFace
        from art.estimators.classification import PyTorchClassifier
    except ImportError as e:
        return {"error": f"needs the bench extra ({e})"}
    torch.set_num_threads(os.cpu_count() or 1)
    start, n = None, 0
    for m in range(models):
        torch.manual_seed(m)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(64 * 8 * 8, 128), torch.nn.ReLU(),
            torch.nn.Linear(128, 10), torch.nn.Softmax(dim=1))
        clf = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32),
                                nb_classes=10, clip_values=(0.0, 1.0))
        attack = MIFace(clf, max_iter=iterations, learning_rate=0.1, batch_size=1,
                        verbose=False)
        y = np.repeat(np.arange(10), samples)
        x0 = np.full((len(y), 3, 32, 32), 0.5, np.float32)
        attack.infer(x0[:1], y[:1])  # warm-up
        start = start or time.perf_counter()
        attack.infer(x0, y)
        n += len(y) * iterations  # upper bound: ART may stop a sample early
    seconds = time.perf_counter() - start
    import art

    return {"seconds": seconds, "image_iterations": n, "image_iterations_per_second": n / seconds,
            "art": art.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()}


def flop_rates(variables, k: int) -> dict:
    """FLOPs of one batched MIFace iteration (XLA cost analysis) and conv fwd+bwd rates at the
    training batch (64) and at this inversion's per-model batch."""
    module = SPEC.build()
    x = jnp.zeros((stack.stack_size(variables), k, *SPEC.image_shape))
    t = jnp.arange(k) % 10

    def one_iter(v, x):
        g = jax.grad(lambda z: jnp.take_along_axis(
            jax.nn.softmax(module.apply(v, z)), t[:, None], 1).sum())(x)
        return jnp.clip(x + 0.1 * g, 0, 1)

    step = jax.jit(jax.vmap(one_iter))
    flops = step.lower(variables, x).compile().cost_analysis()["flops"]
    return {"flops_per_iteration": flops, "conv_gflop_per_s": conv_rate(64),
            "conv_gflop_per_s_same_batch": conv_rate(k)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "inversion.json"))
    args = parser.parse_args()
    variables = stack.init_stack(SPEC, jax.random.split(jax.random.key(0), 2))
    r: dict = {"machine": machine()}
    its_a = 50 if args.quick else 200
    print("(a) compiled stack vs per-sample reference ...", flush=True)
    a_ours = ours(variables, 8, its_a)
    a_ref = reference(variables, 1, its_a)  # 2 x 10 x 1 of the 2 x 10 x 8 samples
    r["a_vs_reference"] = {"ours": a_ours, "reference": a_ref, "speedup":
                           a_ours["image_iterations_per_second"]
                           / a_ref["image_iterations_per_second"]}
    print(f"  {r['a_vs_reference']['speedup']:.1f}x", flush=True)
    print("(b) ART MIFace (PyTorch) vs ours ...", flush=True)
    its_b = 20 if args.quick else 200
    b_art = art_miface(1, its_b)
    b_ours = ours(variables, 1, its_b)
    r["b_vs_art"] = {"ours": b_ours, "art": b_art}
    if "error" not in b_art:
        r["b_vs_art"]["speedup"] = (b_ours["image_iterations_per_second"]
                                    / b_art["image_iterations_per_second"])
        print(f"  {r['b_vs_art']['speedup']:.1f}x", flush=True)
    print("(c) original protocol inversion step ...", flush=True)
    its_c = 1000 if args.quick else 10_000
    c = ours(variables, 1, its_c, warm_up=False)  # compile included: ~1 s of the total
    rates = flop_rates(variables, 10)
    achieved = rates["flops_per_iteration"] * its_c / c["seconds"] / 1e9
    r["c_protocol"] = {**c, "iterations": its_c, **rates, "achieved_gflop_per_s": achieved,
                       "fraction_of_conv_rate": achieved / rates["conv_gflop_per_s"],
                       "fraction_of_conv_rate_same_batch":
                           achieved / rates["conv_gflop_per_s_same_batch"]}
    print(f"  {c['image_iterations_per_second']:.0f} image-iterations/s, "
          f"{achieved:.1f} GFLOP/s = {r['c_protocol']['fraction_of_conv_rate']:.2f} of conv",
          flush=True)
    out = atomic_write_json(args.out, r)
    write_markdown(r)
    print(f"wrote {out} and BENCHMARKS.md")


def write_markdown(r: dict) -> None:
    m = r["machine"]
    a, b, c = r["a_vs_reference"], r["b_vs_art"], r["c_protocol"]
    rate = lambda d: f"{d['image_iterations_per_second']:,.0f}" if "error" not in d else d["error"]
    lines = [
        f"Machine: {m['processor']}, {m['cpu_count']} cores, {m['backend']}, jax {m['jax']}; "
        "`python scripts/bench_inversion.py`. Rates in image-iterations per second.", "",
        "| task | ours | other | speedup |", "|---|---|---|---|",
        f"| (a) 2 SeedCNN x 10 classes x 8 samples, MIFace, vs per-sample reference loop | "
        f"{rate(a['ours'])} | {rate(a['reference'])} | **{a['speedup']:.1f}x** |",
        f"| (b) 2 x 10 x 1, vs IBM ART MIFace + PyTorch | {rate(b['ours'])} | {rate(b['art'])} | "
        f"**{b.get('speedup', float('nan')):.1f}x** |",
        f"| (c) 2 x 10 x 1 x {c['iterations']:,} iterations (original protocol) | {rate(c)} "
        f"({c['seconds']:.1f} s) | | |", "",
        f"(c) achieved {c['achieved_gflop_per_s']:.1f} GFLOP/s against a conv fwd+bwd rate of "
        f"{c['conv_gflop_per_s']:.1f} GFLOP/s at batch 64 measured in the same run: fraction "
        f"**{c['fraction_of_conv_rate']:.2f}**; against the conv rate at the protocol's batch "
        f"(10 images per model, {c['conv_gflop_per_s_same_batch']:.1f} GFLOP/s): "
        f"**{c['fraction_of_conv_rate_same_batch']:.2f}**."]
    update_section("bench_inversion", "Inversion (`scripts/bench_inversion.py`)", lines)


if __name__ == "__main__":
    main()
