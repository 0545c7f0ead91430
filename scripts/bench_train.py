"""Training benchmarks for the foundation issue; writes benchmarks/train.json and the training
section of BENCHMARKS.md.

  (a) SeedCNN training throughput (32x32x3, batch 64, Adam) of drift_jax against PyTorch with the
      same architecture, batch, optimiser and thread count, side by side, plus each XLA:CPU form
      we tried (every JAX variant runs in its own process: XLA reads its flags once).
  (b) a 16-member stack under each execution strategy against 16 sequential single-model runs.
  (c) achieved GFLOP/s of the train step as a fraction of the conv forward+backward rate
      measured in the same run.
  (d) 1 vs 4 virtual CPU devices: equal parameters, and the time of each.

  python scripts/bench_train.py            # full (about 10 minutes on 2 cores)
  python scripts/bench_train.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_common import machine, update_section  # noqa: E402

from drift_jax.files import atomic_write_json  # noqa: E402

YNN_OFF = ("--xla_cpu_experimental_ynn_fusion_type="
           "-individual_convolution,-reduce,-dot,-eltwise,-individual_dot")

# --------------------------------------------------------------------------- child programs
# Each child prints one JSON line. They share this preamble: synthetic CIFAR-shaped data.
PREAMBLE = """
import json, os, time, sys
import numpy as np
N_IMAGES, EPOCHS, BATCH = {n_images}, {epochs}, 64
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (N_IMAGES, 32, 32, 3), dtype=np.uint8)
labels = rng.integers(0, 10, N_IMAGES).astype(np.int32)
"""

JAX_STACK = PREAMBLE + """
import jax
from drift_jax import stack
from drift_jax.config import ExecutionConfig, TrainConfig
from drift_jax.models import ModelSpec
members, seq = {members}, {sequential}
execution = ExecutionConfig(**{execution})
spec = ModelSpec("seedcnn", 10, (32, 32, 3))
cfg = TrainConfig(epochs=EPOCHS, batch_size=BATCH, execution=execution)
def run(n, key):
    v = stack.init_stack(spec, jax.random.split(jax.random.key(key), n))
    return stack.train_stack(spec, v, images, labels, [np.arange(N_IMAGES)] * n, cfg,
                             jax.random.key(key + 1), progress=False)
run(members, 0)  # compile; later runs of this shape reuse the programs
start = time.perf_counter()
if seq:
    results = [run(1, 100 + m) for m in range(members)]
else:
    results = [run(members, 100)]
seconds = time.perf_counter() - start
r = results[-1]
print(json.dumps({{"seconds": seconds, "model_images_per_second":
                  members * N_IMAGES * EPOCHS / seconds, "execution": r.execution.__dict__,
                  "devices": jax.device_count(), "mesh": r.mesh["shape"],
                  "checksum": [float(np.asarray(x, np.float64).sum())
                               for x in jax.tree.leaves(r.variables)]}}))
"""

# A plain Flax/optax train step called from Python, with a chosen pooling and conv form.
JAX_PLAIN_STEP = PREAMBLE + """
import jax, jax.numpy as jnp, optax
from drift_jax.models import ModelSpec
spec = ModelSpec("seedcnn", 10, (32, 32, 3), conv_form="{conv}", pool_form="{pool}")
module, tx = spec.build(), optax.adam(1e-3)
params = spec.init(jax.random.key(0))["params"]
opt = tx.init(params)
@jax.jit
def step(params, opt, x, y):
    def loss(p):
        logits = module.apply({{"params": p}}, x.astype(jnp.float32) / 255)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    g = jax.grad(loss)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt
xs, ys = jnp.asarray(images), jnp.asarray(labels)
steps = N_IMAGES // BATCH
params, opt = jax.block_until_ready(step(params, opt, xs[:BATCH], ys[:BATCH]))
start = time.perf_counter()
for e in range(EPOCHS):
    for i in range(steps):
        sl = slice(i * BATCH, (i + 1) * BATCH)
        params, opt = step(params, opt, xs[sl], ys[sl])
jax.block_until_ready(params)
seconds = time.perf_counter() - start
print(json.dumps({{"model_images_per_second": steps * BATCH * EPOCHS / seconds}}))
"""

TORCH = PREAMBLE + """
import torch, torch.nn as nn
torch.set_num_threads({threads}); torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10))
opt = torch.optim.Adam(model.parameters(), 1e-3)
x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
y = torch.from_numpy(labels).long()
lossf = nn.CrossEntropyLoss()
steps = N_IMAGES // BATCH
def epoch():
    perm = torch.randperm(N_IMAGES)
    for i in range(steps):
        ix = perm[i * BATCH:(i + 1) * BATCH]
        opt.zero_grad(); lossf(model(x[ix]), y[ix]).backward(); opt.step()
epoch()  # warm-up
start = time.perf_counter()
for _ in range(EPOCHS): epoch()
seconds = time.perf_counter() - start
print(json.dumps({{"model_images_per_second": steps * BATCH * EPOCHS / seconds,
                  "torch": torch.__version__, "threads": torch.get_num_threads()}}))
"""

FLOPS = """
import json, time, jax, jax.numpy as jnp, numpy as np, optax
from jax import lax
from drift_jax.models import ModelSpec
B = 64
spec = ModelSpec("seedcnn", 10, (32, 32, 3))
module, tx = spec.build(), optax.adam(1e-3)
params = spec.init(jax.random.key(0))["params"]; opt = tx.init(params)
x = jax.random.uniform(jax.random.key(1), (B, 32, 32, 3)); y = jnp.arange(B) % 10
def step(params, opt):
    g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        module.apply({"params": p}, x), y).mean())(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt
def best_time(f, *a, reps=20):
    jax.block_until_ready(f(*a)); best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps): out = f(*a)
        jax.block_until_ready(out); best = min(best, (time.perf_counter() - t) / reps)
    return best
jstep = jax.jit(step)
step_flops = jstep.lower(params, opt).compile().cost_analysis()["flops"]
step_s = best_time(jstep, params, opt)
import sys; sys.path.insert(0, "scripts")
from bench_common import conv_rate
conv = conv_rate(B)
print(json.dumps({"step_gflops": step_flops / 1e9, "step_ms": step_s * 1e3,
                  "step_gflop_per_s": step_flops / step_s / 1e9, "conv_gflop_per_s": conv,
                  "fraction": (step_flops / step_s / 1e9) / conv}))
"""


def child(code: str, env: dict | None = None, timeout: int = 1200) -> dict:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=timeout)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "train.json"))
    args = parser.parse_args()
    n_images, epochs = (640, 1) if args.quick else (3200, 2)
    stack_images = 320 if args.quick else 960
    threads = os.cpu_count()
    fmt = dict(n_images=n_images, epochs=epochs, threads=threads)
    default_env = {"DRIFT_JAX_XLA_DEFAULTS": "1", "XLA_FLAGS": ""}
    xla_default_env = {"DRIFT_JAX_XLA_DEFAULTS": "0", "XLA_FLAGS": ""}
    results: dict = {"machine": machine(), "n_images": n_images, "epochs": epochs}

    print("(a) throughput, one SeedCNN, batch 64 ...", flush=True)
    attempts = {
        "pytorch 2.13 (reference)": (TORCH.format(**fmt), {}),
        "flax plain step: nn.max_pool, lax.conv, XLA defaults": (
            JAX_PLAIN_STEP.format(conv="autodiff", pool="flax", **fmt), xla_default_env),
        "+ reshape-max pooling": (
            JAX_PLAIN_STEP.format(conv="autodiff", pool="reshape", **fmt), xla_default_env),
        "+ YNNPACK fusions off (XLA flag)": (
            JAX_PLAIN_STEP.format(conv="autodiff", pool="reshape", **fmt), default_env),
        "+ oneDNN (--xla_cpu_use_onednn)": (
            JAX_PLAIN_STEP.format(conv="autodiff", pool="reshape", **fmt),
            {**default_env, "XLA_FLAGS": "--xla_cpu_use_onednn=true"}),
        "+ XNNPACK (--xla_cpu_use_xnnpack)": (
            JAX_PLAIN_STEP.format(conv="autodiff", pool="reshape", **fmt),
            {**default_env, "XLA_FLAGS": "--xla_cpu_use_xnnpack=true"}),
        # ~45 images/s: measured on a tenth of the data to keep the benchmark short.
        "drift_jax train_stack, scan over lax.conv autodiff": (
            JAX_STACK.format(members=1, sequential=False, execution=dict(conv_form="autodiff"),
                             **dict(fmt, n_images=320, epochs=1)), default_env),
        "drift_jax train_stack (default: canonical conv VJP, scan chunks)": (
            JAX_STACK.format(members=1, sequential=False, execution={}, **fmt), default_env),
    }
    a = {}
    for name, (code, env) in attempts.items():
        a[name] = child(code, env)
        print(f"  {name}: {a[name]}", flush=True)
    torch_rate = a["pytorch 2.13 (reference)"].get("model_images_per_second")
    ours = a["drift_jax train_stack (default: canonical conv VJP, scan chunks)"].get(
        "model_images_per_second")
    results["a_throughput"] = {"attempts": a, "ratio_vs_torch": ours / torch_rate
                               if ours and torch_rate else None}

    print("(b) 16-member stack vs 16 sequential runs ...", flush=True)
    sfmt = dict(fmt, n_images=stack_images)
    b = {"sequential 16 x 1": child(JAX_STACK.format(
        members=16, sequential=True, execution={}, **sfmt), default_env)}
    for mode, chunk in (("loop", 32), ("map", 1), ("map", 32), ("vmap", 1), ("vmap", 32)):
        name = f"stack of 16, {mode}, scan chunk {chunk}"
        b[name] = child(JAX_STACK.format(members=16, sequential=False, execution=dict(
            member_mode=mode, scan_chunk=chunk), **sfmt), default_env)
        print(f"  {name}: {b[name]}", flush=True)
    seq_rate = b["sequential 16 x 1"]["model_images_per_second"]
    default_name = "stack of 16, loop, scan chunk 32"
    results["b_stack"] = {"runs": b, "speedup_vs_sequential": {
        k: v.get("model_images_per_second", 0) / seq_rate for k, v in b.items()},
        "default": default_name}

    print("(c) GFLOP/s ...", flush=True)
    results["c_flops"] = child(FLOPS, default_env)
    print(f"  {results['c_flops']}", flush=True)

    print("(d) 1 vs 4 virtual devices ...", flush=True)
    code = JAX_STACK.format(members=4, sequential=False, execution={}, **sfmt)
    one = child(code, default_env)
    four = child(code, {**default_env,
                        "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    diff = max(abs(x - y) / max(abs(x), 1e-6) for x, y in zip(one["checksum"], four["checksum"]))
    results["d_devices"] = {"one_device": one, "four_virtual_devices": four,
                            "max_relative_checksum_difference": diff}
    print(f"  1 device {one['seconds']:.1f} s, 4 devices {four['seconds']:.1f} s, "
          f"max rel diff {diff:.2e}", flush=True)

    out = atomic_write_json(args.out, results)
    write_markdown(results)
    print(f"wrote {out} and BENCHMARKS.md")


def write_markdown(r: dict) -> None:
    m = r["machine"]
    lines = [f"Machine: {m['processor']}, {m['cpu_count']} cores, {m['backend']}, jax {m['jax']}; "
             f"`python scripts/bench_train.py` ({r['n_images']} images x {r['epochs']} epochs).",
             "", "**(a) SeedCNN training throughput, 32x32x3, batch 64, Adam, one model**", "",
             "| variant | images/s |", "|---|---|"]
    for name, v in r["a_throughput"]["attempts"].items():
        rate = v.get("model_images_per_second")
        lines.append(f"| {name} | {f'{rate:,.0f}' if rate else v.get('error', '')} |")
    ratio = r["a_throughput"]["ratio_vs_torch"]
    lines += ["", f"drift_jax / PyTorch: **{ratio:.2f}x**" if ratio else "", "",
              "**(b) 16 SeedCNNs: stack strategies vs 16 sequential trainings**", "",
              "| strategy | model-images/s | vs sequential |", "|---|---|---|"]
    for name, v in r["b_stack"]["runs"].items():
        rate = v.get("model_images_per_second", 0)
        lines.append(f"| {name} | {rate:,.0f} | "
                     f"{r['b_stack']['speedup_vs_sequential'][name]:.2f}x |")
    c = r["c_flops"]
    lines += ["", "**(c) Achieved FLOP rate**", "",
              f"train step {c.get('step_gflop_per_s', 0):.1f} GFLOP/s "
              f"({c.get('step_gflops', 0):.2f} GFLOP per batch-64 step, XLA cost analysis), "
              f"conv fwd+bwd {c.get('conv_gflop_per_s', 0):.1f} GFLOP/s: "
              f"fraction **{c.get('fraction', 0):.2f}**", "",
              "**(d) 1 vs 4 virtual CPU devices, 4-member stack**", "",
              f"1 device: {r['d_devices']['one_device']['seconds']:.1f} s; 4 virtual devices "
              f"(mesh {r['d_devices']['four_virtual_devices']['mesh']}): "
              f"{r['d_devices']['four_virtual_devices']['seconds']:.1f} s; max relative "
              "difference of parameter sums "
              f"{r['d_devices']['max_relative_checksum_difference']:.1e}"]
    update_section("bench_train", "Training (`scripts/bench_train.py`)", lines)


if __name__ == "__main__":
    main()
