"""Secure aggregation: its cost next to the same run in the clear, from one invocation.

    python bench/secure_agg.py [--sites 3 10 20] [--rounds 2] [--dp]

For each site count: the same DAVIS job (compound split, the demo's model and batch size, one
local epoch per round, in-process engine) runs once in the clear and once under secure
aggregation, in alternation within this process. Printed per size:

* round time secure / clear (mean over rounds 2..R: round 1 also warms caches), with the
  parties' share of it (opening, MPC bound check, reveal);
* bytes one site sends, secure envelope / plaintext update (Bonawitz et al. 2017 report 1.73x);
* the MPC bound check per site (sketching the shares + CrypTen comparisons, both parties
  in parallel), and each party's own checks per site (the site's signature, labels, the
  weight cap, HPKE opening, the piece commitment);
* the parties' start-up (once per run);
* the revealed mean against the clear run's (max abs difference of the final models).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from pharmafl.models.dti import ModelConfig
from pharmafl.pipeline.config import (
    DataConfig,
    FederationConfig,
    LedgerConfig,
    RunConfig,
)
from pharmafl.pipeline.engine_local import LocalEngine
from pharmafl.pipeline.events import EventBus
from pharmafl.pipeline.run import prepare
from pharmafl.pipeline.secure_agg.config import SecureAggregationConfig
from pharmafl.sites.privacy import PrivacyConfig
from pharmafl.sites.training import TrainConfig


class Clock:
    """A listener: wall time of every round, the parties' own timings, bytes sent per site."""

    def __init__(self):
        self.started, self.rounds, self.secure, self.bytes, self.first = {}, {}, {}, [], None
        self.norms: list[float] = []  # clear runs: the sites' update norms (what the bound must admit)

    def on_event(self, e) -> None:
        now = time.perf_counter()
        if e.type == "run_started":
            self.first = now
        if e.type == "round_started":
            self.started[e.payload["round"]] = now
        elif e.type == "round_ended":
            self.rounds[e.payload["round"]] = now - self.started[e.payload["round"]]
            self.norms += list(((e.payload.get("diagnostics") or {}).get("update_norms") or {}).values())
        elif e.type == "site_update":
            self.bytes.append(e.payload["update_bytes"])
        elif e.type == "aggregated" and "secure" in e.payload:
            self.secure[e.payload["round"]] = e.payload["secure"]["seconds"]

    def close(self) -> None:
        pass


def config(sites: int, rounds: int, dp: bool, secure: bool) -> RunConfig:
    cfg = RunConfig(
        name="bench-secure",
        seed=0,
        data=DataConfig(dataset="davis", sites=sites, partition="compound"),
        model=ModelConfig(label_offset=5.0),
        train=TrainConfig(batch_size=512, lr=5e-4),
        federation=FederationConfig(rounds=rounds, local_epochs=1, engine="local", min_sites=max(2, sites - 2)),
        ledger=LedgerConfig(enabled=False),
        secure_aggregation=SecureAggregationConfig(enabled=secure),
    )
    if dp:
        cfg = replace(
            cfg, privacy=PrivacyConfig(mode="local", epsilon=8.0, batch_size=512), train=replace(cfg.train, lr=1e-3)
        )
    return cfg


def one(cfg: RunConfig, out: Path, cache: Path) -> tuple[Clock, float, dict]:
    plan = prepare(cfg, out, cache_dir=cache)
    clock = Clock()
    t0 = time.perf_counter()
    metrics = LocalEngine().run(plan, EventBus([clock]))
    return clock, time.perf_counter() - t0, metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, nargs="+", default=[3, 10, 20])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dp", action="store_true", help="DP-SGD at every site (epsilon 8) in both runs")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for n in args.sites:
            clear, t_clear, m_clear = one(config(n, args.rounds, args.dp, False), Path(tmp) / f"clear-{n}", cache)
            hidden, t_secure, m_secure = one(config(n, args.rounds, args.dp, True), Path(tmp) / f"secure-{n}", cache)
            later = range(2, args.rounds + 1) if args.rounds > 1 else range(1, 2)
            rc = statistics.mean(clear.rounds[r] for r in later)
            rs = statistics.mean(hidden.rounds[r] for r in later)
            parties = {
                k: statistics.mean(hidden.secure[r][k] for r in later) for k in ("open", "bound_check", "sum", "checks")
            }
            startup = (t_secure - sum(hidden.rounds.values())) - (t_clear - sum(clear.rounds.values()))
            a = load_file(Path(tmp) / f"clear-{n}" / "model.safetensors")
            b = load_file(Path(tmp) / f"secure-{n}" / "model.safetensors")
            diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
            row = {
                "sites": n,
                "round_clear_s": rc,
                "round_secure_s": rs,
                "ratio": rs / rc,
                "bytes_ratio": statistics.mean(hidden.bytes) / statistics.mean(clear.bytes),
                "bytes_secure": statistics.mean(hidden.bytes),
                "bound_check_per_site_s": parties["bound_check"] / n,
                "party_checks_per_site_s": parties["checks"] / n,
                "parties_s": parties,
                "extra_startup_s": startup,
                "max_model_diff": diff,
                "ci_clear": m_clear["test_ci"],
                "ci_secure": m_secure["test_ci"],
                "max_update_norm_clear": max(clear.norms),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        f"\nsecure aggregation vs clear, DAVIS, {args.rounds} rounds x 1 local epoch, in-process engine, "
        f"parties as services (pharmafl party serve) over TLS"
        f"{', DP-SGD at every site' if args.dp else ''}"
    )
    print(
        f"{'sites':>5} {'clear s/rd':>10} {'secure s/rd':>11} {'ratio':>6} {'bytes ratio':>11} "
        f"{'bound chk/site':>14} {'checks/site':>11} {'open+sum s':>10} {'start-up s':>10} {'|Δ model|':>9} "
        f"{'CI clear/secure':>15} "
        f"{'max ‖Δ‖':>7}"
    )
    for r in rows:
        p = r["parties_s"]
        print(
            f"{r['sites']:>5} {r['round_clear_s']:>10.2f} {r['round_secure_s']:>11.2f} {r['ratio']:>6.3f} "
            f"{r['bytes_ratio']:>11.3f} {r['bound_check_per_site_s'] * 1000:>11.1f} ms "
            f"{r['party_checks_per_site_s'] * 1000:>8.1f} ms {p['open'] + p['sum']:>10.2f} "
            f"{r['extra_startup_s']:>10.1f} {r['max_model_diff']:>9.1e} {r['ci_clear']:.4f}/{r['ci_secure']:.4f} "
            f"{r['max_update_norm_clear']:>7.2f}"
        )


if __name__ == "__main__":
    main()
