"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_learning_curve(history: list[dict], best_epoch: int, path: Path, title: str) -> Path:
    """Train loss and validation/test MSE (left), validation/test CI (right) per epoch."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_mse, ax_ci) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_mse.plot(epochs, [r["train_loss"] for r in history], label="train loss (MSE)", color="0.5")
    ax_mse.plot(epochs, [r["val_mse"] for r in history], label="validation MSE")
    ax_mse.plot(epochs, [r["test_mse"] for r in history], label="test MSE")
    ax_mse.set_yscale("log")
    ax_mse.set_ylabel("MSE (pKd²)")
    ax_ci.plot(epochs, [r["val_ci"] for r in history], label="validation CI")
    ax_ci.plot(epochs, [r["test_ci"] for r in history], label="test CI")
    ax_ci.set_ylabel("concordance index")
    for ax in (ax_mse, ax_ci):
        ax.axvline(best_epoch, color="k", linestyle=":", linewidth=1, label=f"kept: epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_site_curves(rows: list[dict], metric: str, path: Path, title: str) -> Path:
    """One line per site: ``metric`` (e.g. ``global_val_ci``) over rounds."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    sites = sorted({r["site"] for r in rows if r.get(metric) is not None})
    for site in sites:
        pts = sorted((r["round"], r[metric]) for r in rows if r["site"] == site and r.get(metric) is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=site)
    ax.set_xlabel("round")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(sites) > 8 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cosine_heatmap(sites: list[str], matrix: list[list[float]], path: Path, title: str) -> Path:
    """Pairwise cosine similarity of site updates."""
    n = len(sites)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * n, 0.6 + 0.45 * n))
    im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), sites, rotation=90, fontsize=7)
    ax.set_yticks(range(n), sites, fontsize=7)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046, label="cosine")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_global_curve(rounds: list[int], values: dict[str, list[float]], path: Path, title: str) -> Path:
    """Global metrics over rounds (e.g. test CI and MSE), one axis each."""
    fig, axes = plt.subplots(1, len(values), figsize=(5.5 * len(values), 4.0), squeeze=False)
    for ax, (name, ys) in zip(axes[0], values.items()):
        ax.plot(rounds, ys, marker=".")
        ax.set_xlabel("round")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
