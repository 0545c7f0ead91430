"""Helpers shared by the benchmark scripts: the machine record, the conv reference rate, and
the regenerated sections of BENCHMARKS.md."""

from __future__ import annotations

import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    from drift_jax import runtime

    env = runtime.environment()
    return {k: env[k] for k in ("processor", "cpu_count", "jax", "backend", "python")}


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
