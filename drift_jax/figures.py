"""Figures written beside results (matplotlib, Agg backend, atomic PNG writes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drift_jax.files import atomic_save_figure


def _save(path, fig) -> Path:
    try:
        return atomic_save_figure(path, fig)
    finally:
        _pyplot().close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(path: str | Path, images: np.ndarray, row_labels: list[str],
               title: str = "") -> Path:
    """Saves a grid of images [rows, cols, H, W, C] (uint8 or floats in [0, 1]) as a PNG."""
    plt = _pyplot()
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9 + 1, rows * 0.9 + 0.5),
                             squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            im = images[r, c]
            ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray",
                      vmin=0, vmax=255 if im.dtype == np.uint8 else 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(path, fig)


def dataset_grid(path: str | Path, images: np.ndarray, labels: np.ndarray,
                 class_names: tuple[str, ...], per_class: int = 8, title: str = "") -> Path:
    """The first ``per_class`` images of every class, one row per class (blank where fewer)."""
    h, w, c = images.shape[1:]
    grid = np.zeros((len(class_names), per_class, h, w, c), np.uint8)
    for k in range(len(class_names)):
        picked = np.flatnonzero(labels == k)[:per_class]
        grid[k, : len(picked)] = images[picked]
    return image_grid(path, grid, list(class_names), title)


def _mosaic(tiles: np.ndarray, gap: int = 1) -> np.ndarray:
    """[rows, cols, H, W, ch] -> one image [rows*(H+gap), cols*(W+gap), ch] with white gaps."""
    rows, cols, h, w, ch = tiles.shape
    out = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap, ch), np.float32)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = tiles[r, c]
    return out


def gray_grid(path: str | Path, images: np.ndarray, class_names: list[str],
              panel_titles: list[str] | None = None, title: str = "") -> Path:
    """Gray data [models, classes, samples, H, W, ch] in [0, 1]: one panel per model, rows
    classes, columns samples."""
    plt = _pyplot()
    m, c, s, h, w, _ = images.shape
    fig, axes = plt.subplots(1, m, figsize=(m * (s * 0.35 + 1.2), c * 0.35 + 0.8), squeeze=False)
    for k in range(m):
        ax = axes[0, k]
        mosaic = _mosaic(np.asarray(images[k], np.float32))
        ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray", vmin=0,
                  vmax=1, interpolation="nearest")
        ax.set_yticks([(h + 1) * r + h / 2 for r in range(c)], class_names, fontsize=7)
        ax.set_xticks([])
        ax.set_title(panel_titles[k] if panel_titles else f"model {k}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(path, fig)


def grouped_bars(path: str | Path, groups: list[str], series: dict[str, np.ndarray],
                 ylabel: str, title: str = "", ylim: tuple | None = None,
                 line: float | None = None) -> Path:
    """One group of bars per entry of ``groups`` (e.g. classes), one bar per series; ``line``
    draws a horizontal reference (e.g. alpha)."""
    plt = _pyplot()
    x, width = np.arange(len(groups)), 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(min(12, max(4, len(groups) * 0.12 * (len(series) + 2))),
                                    3.0))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    if line is not None:
        ax.axhline(line, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(x, groups, fontsize=7, rotation=45)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set_title(title, fontsize=9)
    return _save(path, fig)


def score_bars(path: str | Path, class_names: list[str], per_class: dict,
               title: str = "") -> Path:
    """Per-class membership score of base, production and the control mean."""
    series = {label: per_class[key] for key, label in [
        ("base", "base"), ("production", "production"), ("control_mean", "controls (mean)")]
        if per_class.get(key) is not None}  # no controls: no control bars
    return grouped_bars(path, class_names, series, "member score", title)


def null_distribution(path: str | Path, control_scores: list[float], production: float,
                      base: float, title: str = "") -> Path:
    """Control models' scores (the null) with the production and base scores marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 2.6))
    ax.hist(control_scores, bins=max(5, len(control_scores) // 2), color="grey", alpha=0.7,
            label="controls")
    ax.axvline(production, color="red", label="production")
    ax.axvline(base, color="blue", linestyle="--", label="base")
    ax.set_xlabel("member score")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(path, fig)


def rate_against(path: str | Path, table: list[dict], x_key: str, methods: list[str],
                 panel_keys: list[str]) -> Path:
    """Detection rate against ``x_key`` (e.g. severity), one line per method, one panel per
    combination of ``panel_keys`` (e.g. scenario)."""
    plt = _pyplot()
    panels: dict[tuple, list[dict]] = {}
    for row in table:
        panels.setdefault(tuple(row.get(k) for k in panel_keys), []).append(row)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1, 2.8),
                             squeeze=False, sharey=True)
    for ax, (panel, rows) in zip(axes[0], sorted(panels.items(), key=str)):
        rows = sorted(rows, key=lambda r: float(r[x_key]))
        for method in methods:
            pts = [(float(r[x_key]), r[method]) for r in rows if r.get(method) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        ax.set_title(", ".join(f"{k}={v}" for k, v in zip(panel_keys, panel)), fontsize=7)
        ax.set_xlabel(x_key)
        ax.set_ylim(-0.05, 1.05)
    axes[0, 0].set_ylabel("detection rate")
    axes[0, -1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5))
    return _save(path, fig)


def null_strips(path: str | Path, runs: list[tuple[str, dict]], title: str = "") -> Path:
    """One row per run: its control models' scores (the null) and its production score."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 0.25 * len(runs) + 1))
    for i, (_, scores) in enumerate(runs):
        ax.scatter(scores["controls"], np.full(len(scores["controls"]), i), s=8, color="grey")
        ax.scatter([scores["production"]], [i], s=14, color="red")
    ax.set_yticks(range(len(runs)), [name[:8] for name, _ in runs], fontsize=5)
    ax.set_xlabel("member score")
    ax.set_title(title, fontsize=8)
    return _save(path, fig)
