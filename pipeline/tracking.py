"""Run outputs from events: per-round Parquet, TensorBoard, PNG plots, ``metrics.json``.

:class:`RunTracker` is a listener: it sees the same events as the ledger and writes

* ``rounds.parquet``: one row per (round, site) with the site's reported metrics, update
  norm and cosine to the mean (and, under DP, ε this round, cumulative ε and the share of
  clipped gradients), plus one row per round with ``site = "global"``;
* ``tensorboard/global`` and ``tensorboard/<site-id>``: the same scalars;
* ``plots/``: per-site validation curves, the last round's cosine heatmap, global test
  CI and MSE over rounds, and under DP each site's cumulative ε;
* ``metrics.json``: the final figures, at ``run_ended``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pharmafl.pipeline import events as ev
from pharmafl.pipeline.artifacts import write_json
from pharmafl.pipeline.events import Event
from pharmafl.pipeline.plots import plot_cosine_heatmap, plot_global_curve, plot_site_curves


class RunTracker:
    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.rows: list[dict] = []
        self.alarms: list[dict] = []
        self.last_diagnostics: dict | None = None
        self.failures: list[dict] = []
        self.declined: list[dict] = []
        self.epsilon: dict[str, float] = {}  # actor -> cumulative ε so far
        self._privacy: dict[tuple[int, str], dict] = {}  # (round, actor) -> ε and clip figures
        self._writers = {}
        self._tensorboard = tensorboard

    @classmethod
    def resumed(cls, run_dir: Path, tensorboard: bool = True) -> RunTracker:
        """A tracker for a resumed run: the earlier sessions' events (``events.jsonl``) replayed,
        so ``rounds.parquet``, the plots and ``metrics.json`` cover the whole run; TensorBoard
        already holds their scalars and gets only the new ones."""
        from pharmafl.pipeline.eventlog import read_events

        tracker = cls(run_dir, tensorboard=False)
        for event in read_events(Path(run_dir) / "events.jsonl"):
            if event.type != ev.RUN_ENDED:  # an earlier session's end: the figures are the final session's
                tracker.on_event(event)
        tracker._tensorboard = tensorboard
        return tracker

    def _writer(self, name: str):
        if not self._tensorboard:
            return None
        if name not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[name] = SummaryWriter(str(self.run_dir / "tensorboard" / name))
        return self._writers[name]

    def _scalars(self, name: str, step: int, values: dict) -> None:
        writer = self._writer(name)
        if writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(key, value, step)

    def on_event(self, event: Event) -> None:
        p = event.payload
        if event.type == ev.ROUND_ENDED:
            r = p["round"]
            diag = p.get("diagnostics") or {}
            self.last_diagnostics = diag or self.last_diagnostics
            sites = set(p["metrics"].get("sites", {})) | {a for (rr, a) in self._privacy if rr == r and a != "server"}
            for site in sorted(sites):
                metrics = p["metrics"].get("sites", {}).get(site, {})
                row = {
                    "round": r,
                    "site": site,
                    **metrics,
                    "update_norm": diag.get("update_norms", {}).get(site),
                    "cosine_to_mean": diag.get("cosine_to_mean", {}).get(site),
                    **self._privacy.pop((r, site), {}),
                }
                self.rows.append(row)
                self._scalars(site, r, row)
            glob = {
                "round": r,
                "site": "global",
                **{f"test_{k}": v for k, v in p["metrics"].get("global", {}).items()},
                **self._privacy.pop((r, "server"), {}),
            }
            self.rows.append(glob)
            self._scalars("global", r, glob)
            self._flush_rows()
        elif event.type == ev.PRIVACY_SPENT:
            self.epsilon[event.actor] = p["epsilon_total"]
            self._privacy.setdefault((p["round"], event.actor), {}).update(
                epsilon_total=p["epsilon_total"], epsilon_round=p["epsilon_round"]
            )
        elif event.type == ev.CLIP:
            self._privacy.setdefault((p["round"], event.actor), {}).update(
                clipped_fraction=p["clipped"] / p["total"] if p["total"] else 0.0
            )
        elif event.type == ev.SITE_DECLINED:
            self.declined.append({"site": event.actor, **p})
        elif event.type == ev.ALARM:
            self.alarms.append(dict(p))
        elif event.type == ev.SITE_FAILED:
            self.failures.append(dict(p))
        elif event.type == ev.RUN_ENDED:
            self._finish(p)

    def _flush_rows(self) -> None:
        frame = pd.DataFrame(self.rows)
        tmp = self.run_dir / ".rounds.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.replace(self.run_dir / "rounds.parquet")

    def _finish(self, p: dict) -> None:
        metrics = {
            **p.get("metrics", {}),
            "status": p["status"],
            "rounds": p["rounds"],
            "model_sha256": p["model_hash"],
            "alarms": self.alarms,
            "failures": self.failures,
            "declined": self.declined,
        }
        if self.epsilon:
            metrics["epsilon_spent"] = dict(sorted(self.epsilon.items()))
        write_json(self.run_dir / "metrics.json", metrics)
        plots = self.run_dir / "plots"
        plots.mkdir(exist_ok=True)
        site_rows = [r for r in self.rows if r["site"] != "global"]
        glob = [r for r in self.rows if r["site"] == "global" and "test_ci" in r]
        if site_rows:
            plot_site_curves(
                site_rows,
                "global_val_ci",
                plots / "site_validation_ci.png",
                "Global model on each site's validation split (CI)",
            )
            plot_site_curves(
                site_rows,
                "global_val_mse",
                plots / "site_validation_mse.png",
                "Global model on each site's validation split (MSE)",
            )
        if any("epsilon_total" in r for r in site_rows):
            plot_site_curves(
                [r for r in site_rows if "epsilon_total" in r],
                "epsilon_total",
                plots / "privacy_epsilon.png",
                "Cumulative ε spent by each site",
            )
        if self.last_diagnostics and self.last_diagnostics.get("sites"):
            d = self.last_diagnostics
            plot_cosine_heatmap(
                d["sites"],
                d["cosine_matrix"],
                plots / "cosine_heatmap.png",
                "Cosine similarity of site updates, last round",
            )
        if glob:
            plot_global_curve(
                [r["round"] for r in glob],
                {"test CI": [r["test_ci"] for r in glob], "test MSE": [r["test_mse"] for r in glob]},
                plots / "global_test.png",
                "Global model on the benchmark test set",
            )

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
