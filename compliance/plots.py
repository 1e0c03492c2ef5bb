"""The report's plots (PNG, matplotlib Agg): ε over rounds, validation curves, cosine heatmap.

Drawn from the record's data only, so a report re-rendered later shows the same figures.
Rounds are integers on every x axis.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.ticker import MaxNLocator

from pharmafl.pipeline.plots import plot_cosine_heatmap, plt


def _lines(
    series: dict[str, list[tuple[int, float]]],
    path: Path,
    title: str,
    ylabel: str,
    budgets: dict[str, float] | None = None,
) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for name, pts in sorted(series.items()):
        pts = sorted(pts)
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
        if budgets and budgets.get(name) is not None:
            ax.axhline(budgets[name], color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(series) > 8 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _series(rows: list[dict], key: str, value: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r.get(value) is not None and r.get("round") is not None:
            out.setdefault(r[key], []).append((r["round"], r[value]))
    return out


def draw_plots(record: dict, out: Path) -> dict[str, Path]:
    """Every plot the record has data for, under ``out``; returns ``{name: path}``."""
    out.mkdir(parents=True, exist_ok=True)
    summary, privacy, made = record["summary"], record["privacy"], {}
    if privacy["enabled"] and privacy["sites"]:
        eps = {
            s["party"]: [(r, t) for r, _, t in s["epsilon_by_round"] if r is not None and t is not None]
            for s in privacy["sites"]
        }
        made["privacy_epsilon"] = _lines(
            eps,
            out / "privacy_epsilon.png",
            "Privacy spent per party (dashed: budget)",
            "cumulative ε",
            {s["party"]: s.get("budget") for s in privacy["sites"]},
        )
    for metric, label in (("global_val_ci", "CI"), ("global_val_mse", "MSE")):
        series = _series(summary["validation_curves"], "site", metric)
        if series:
            made[f"site_validation_{label.lower()}"] = _lines(
                series,
                out / f"site_validation_{label.lower()}.png",
                f"Global model on each site's validation split ({label})",
                f"validation {label}",
            )
    glob = [{**r, "who": "global"} for r in summary["global_by_round"]]
    for metric in ("ci", "mse"):
        series = _series(glob, "who", metric)
        if series:
            made[f"global_test_{metric}"] = _lines(
                series,
                out / f"global_test_{metric}.png",
                f"Global model on the benchmark test set ({metric.upper()})",
                f"test {metric.upper()}",
            )
    last = summary.get("cosine_last_round")
    if last and last.get("matrix"):
        matrix = [[0.0 if v is None else v for v in row] for row in last["matrix"]]
        made["cosine_heatmap"] = plot_cosine_heatmap(
            last["sites"], matrix, out / "cosine_heatmap.png", "Cosine similarity of site updates, last round"
        )
    return made
