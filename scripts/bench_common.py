"""Helpers shared by the benchmark scripts: the machine record, the benchmark datasets, the conv
reference rate, and the regenerated sections of BENCHMARKS.md."""

from __future__ import annotations

import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    from drift_jax import runtime

    env = runtime.environment()
    return {k: env[k] for k in ("processor", "cpu_count", "jax", "backend", "device_kind",
                                "python")}


def machine_label(m: dict) -> str:
    """"NVIDIA H200" on an accelerator, else "AMD EPYC, 2 cores"."""
    if m.get("backend", "cpu") != "cpu":
        return m.get("device_kind", m["backend"].upper())
    return f"{m['processor']}, {m['cpu_count']} cores"


# The benchmarks' recipe per dataset (config overrides). MNIST: 3 epochs and 4 regularised gray
# images per class at 1,000 steps (MIFace's do not transfer there, docs/RESULTS.md). CIFAR-10
# reduced for 2 CPU cores (with `load_dataset`'s 6,000 images: base 1,500, production 1,200):
# 5 epochs, 8 regularised gray images per class at 500 steps. cifar10_full (for a GPU): the
# whole training split, the test split held out, and the improved recipe: 3 epochs, 16
# regularised gray images per class at 1,000 steps. The real datasets are TFDS specs: with
# DRIFT_JAX_DATA_DIR naming a folder of local copies (drift_jax.data.sources) they need no network.
RECIPES = {
    "digits": [],
    "mnist": ["train.epochs=3", 'inversion.method="regularized"', "inversion.samples_per_class=4",
              "inversion.regularized.steps=1000", "inversion.regularized.learning_rate=0.1",
              "inversion.regularized.flip=false"],
    "cifar10": ["train.epochs=5", 'inversion.method="regularized"',
                "inversion.samples_per_class=8", "inversion.regularized.steps=500",
                "inversion.regularized.learning_rate=0.05"],
    "cifar10_full": ["train.epochs=3", 'inversion.method="regularized"',
                     "inversion.samples_per_class=16", "inversion.regularized.steps=1000",
                     "inversion.regularized.learning_rate=0.05", "reference_fraction=0.55",
                     'holdout="tfds:cifar10:test"'],
}


def load_dataset(name: str):
    """digits (embedded), mnist (the MNIST test set), cifar10: CIFAR-10 reduced for 2 CPU cores,
    a stratified 6,000-image subset (12 %) of the training split, or cifar10_full: the whole
    training split. MNIST and CIFAR-10 come from TFDS or DRIFT_JAX_DATA_DIR's local copies."""
    from drift_jax import data

    if name == "digits":
        return data.digits()
    if name == "mnist":
        return data.load("tfds:mnist:test")
    full = data.load("tfds:cifar10:train")
    if name == "cifar10_full":
        return full
    keep = data.stratified_split(full.labels, [0.12], 0, full.num_classes)[0]
    return full.subset(keep, "cifar10[6000]")


def conv_rate(batch: int) -> float:
    """GFLOP/s of SeedCNN's second conv (most of its FLOPs), forward + both gradients, the
    machine's reference rate for the achieved-FLOP fractions."""
    import jax

    from drift_jax import layers

    a = jax.random.normal(jax.random.key(2), (batch, 16, 16, 32))
    w = jax.random.normal(jax.random.key(3), (3, 3, 32, 64))

    def conv_fb(a, w):
        out, vjp = jax.vjp(lambda a, w: layers._conv(a, w, 1), a, w)
        return vjp(out)

    jconv = jax.jit(conv_fb)
    flops = jconv.lower(a, w).compile().cost_analysis()["flops"]
    jax.block_until_ready(jconv(a, w))
    best = 1e9
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(20):
            out = jconv(a, w)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / 20)
    return flops / best / 1e9


def update_section(marker: str, title: str, lines: list[str]) -> Path:
    """Replaces (or appends) the ``<!-- marker -->`` block of BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"<!-- {marker} -->\n" + "\n".join(lines) + f"\n<!-- /{marker} -->"
    pattern = rf"<!-- {marker} -->.*<!-- /{marker} -->"
    if re.search(pattern, text, flags=re.S):
        text = re.sub(pattern, lambda _: block, text, flags=re.S)
    else:
        text += f"\n## {title}\n\n{block}\n"
    path.write_text(text)
    return path
