"""Figures for the report: learning curves and image grids (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def read_history(path: Path) -> dict[str, np.ndarray]:
    """Read a learning-curve CSV into columns; empty cells become NaN (e.g. validation rows)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, np.ndarray] = {}
    for key in rows[0].keys() if rows else []:
        values = []
        for row in rows:
            try:
                values.append(float(row[key]))
            except (TypeError, ValueError):
                values.append(np.nan)
        columns[key] = np.asarray(values)
    return columns


def plot_history(path: Path, out: Path, title: str) -> Path | None:
    """One panel per numeric column of a history CSV against its first column (iteration or epoch)."""
    columns = read_history(path)
    if len(columns) < 2:
        return None
    x_name, *names = list(columns)
    names = [n for n in names if np.isfinite(columns[n]).any()]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        keep = np.isfinite(columns[name]) & np.isfinite(columns[x_name])
        ax.plot(columns[x_name][keep], columns[name][keep], marker="." if keep.sum() < 30 else None, lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x_name, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _load_gray(path: Path, size: int) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L").resize((size, size), Image.BILINEAR))


def image_grid(rows: dict[str, list[Path]], out: Path, size: int = 96, columns: int = 8) -> Path | None:
    """A grid with one labelled row of images per entry of `rows` (e.g. real vs synthetic)."""
    rows = {k: v[:columns] for k, v in rows.items() if v}
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.3 * columns, 1.45 * len(rows)), squeeze=False)
    for r, (label, paths) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(paths):
                ax.imshow(_load_gray(paths[c], size), cmap="gray", vmin=0, vmax=255)
        axes[r][0].set_title(label, fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_comparison(
    summary: dict[str, dict], seeds: list[int], differences: dict[str, dict] | None, baseline: str, out: Path
) -> Path:
    """`mgcc compare` at a glance: each variant's test Dice per seed (one line per seed, so a seed's split is
    followed across variants), and each variant's paired Dice difference to the baseline with its 95% interval."""
    names = list(summary)
    panels = 2 if differences else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.2), squeeze=False)
    ax = axes[0][0]
    per_seed = np.array([summary[n]["dice"]["per_seed"] for n in names])  # variants x seeds
    for column, seed in enumerate(seeds):
        ax.plot(range(len(names)), per_seed[:, column], marker="o", lw=1, alpha=0.7, label=f"seed {seed}")
    ax.plot(range(len(names)), per_seed.mean(1), color="k", lw=2, label="mean")
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel("test Dice (mean over images)", fontsize=8)
    ax.legend(fontsize=7)
    if differences:
        ax = axes[0][1]
        rows = [n for n in names if n in differences]
        means = np.array([differences[n]["mean"] for n in rows])
        lows, highs = (np.array([differences[n]["ci95"][i] for n in rows]) for i in (0, 1))
        ax.errorbar(means, range(len(rows)), xerr=np.maximum([means - lows, highs - means], 0), fmt="o", capsize=4)
        ax.axvline(0, color="grey", lw=1, ls="--")
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # top to bottom as in the table
        ax.set_xlabel(f"Dice minus {baseline}, paired per image (95% CI)", fontsize=8)
    for a in axes[0]:
        a.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
