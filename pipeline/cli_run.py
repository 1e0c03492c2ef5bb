"""``pharmafl run CONFIG.yaml``: a federated run with Rich progress and a summary.

Progress, the run's alarms and notices go to stderr; the summary table (or, with ``--json``,
one JSON document) to stdout. ``--set section.key=value`` changes any key of the config;
``--sites``, ``--rounds`` and ``--engine`` are shortcuts for the common ones. The run
directory's ``config.yaml`` records the config after them. Nothing heavy is imported
before the command runs, so ``pharmafl run --help`` is quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from pharmafl import console
from pharmafl.pipeline import events as ev
from pharmafl.pipeline.config import Engine
from pharmafl.pipeline.events import Event


class ProgressListener:
    """Shows round and sites-done progress from the run's events (on ``progress``'s console, stderr)."""

    def __init__(self, progress: Progress, rounds: int, sites: int):
        self.progress = progress
        self.rounds = progress.add_task("rounds", total=rounds)
        self.sites = progress.add_task("sites", total=sites)
        self.done: set[str] = set()

    def _site_done(self, site: str) -> None:
        if site not in self.done:
            self.done.add(site)
            self.progress.advance(self.sites)

    def on_event(self, event: Event) -> None:
        p, t = event.payload, event.type
        if t == ev.ROUND_STARTED:
            self.done.clear()
            self.progress.reset(self.sites, total=len(p["sites"]), description=f"sites of round {p['round']}")
        elif t == ev.SITE_UPDATE:
            self._site_done(event.actor)
        elif t == ev.ROUND_ENDED:
            g = p["metrics"].get("global", {})
            status = f"rounds (test MSE {g['mse']:.3f} CI {g['ci']:.3f})" if g else "rounds"
            self.progress.update(self.rounds, advance=1, description=status)
        elif t == ev.RUN_RESUMED:
            self.progress.update(self.rounds, completed=p["steps_done"])
            if p["interrupted_rounds"]:
                self.progress.console.print(
                    f"[yellow]round(s) {p['interrupted_rounds']} were interrupted[/]: redone from "
                    f"{'round ' + str(p['from_round']) if p['from_round'] else 'the initial model'}'s checkpoint "
                    f"as round {p['next_round']}"
                )
        elif t == ev.SITE_TIMED_OUT:
            self._site_done(p["site"])
            self.progress.console.print(
                f"[yellow]{p['site']} timed out[/] in round {p['round']} (no answer in {p['timeout_s']} s)"
            )
        elif t == ev.ALARM:
            self.progress.console.print(f"[yellow]alarm[/] round {p['round']}: {p['message']}")
        elif t == ev.SITE_DECLINED:
            self._site_done(event.actor)
            self.progress.console.print(
                f"[yellow]{event.actor} declined[/] round {p['round']}: {p['reason']}"
                f" (ε spent {p.get('epsilon_total', float('nan')):.3f} of {p.get('budget')})"
            )
        elif t == ev.SITE_FAILED:
            self._site_done(p["site"])
            self.progress.console.print(f"[red]{p['site']} failed[/] in round {p['round']}: {p['error']}")

    def close(self) -> None:
        pass


def run_command(
    config: Annotated[Path, typer.Argument(help="Run config (YAML), e.g. configs/davis-10sites.yaml.")],
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="SECTION.KEY=VALUE",
            help="Change one key of the config, the value read as YAML (repeatable): --set federation.rounds=3, "
            "--set data.partition=iid, --set train.lr=1e-3, --set 'federation.strategy_options={mu: 0.01}'.",
        ),
    ] = None,
    engine: Annotated[Engine | None, typer.Option(help="Shortcut for --set federation.engine=...")] = None,
    sites: Annotated[int | None, typer.Option(help="Shortcut for --set data.sites=N.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Shortcut for --set federation.rounds=N.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (new or empty; default runs/<name>).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(envvar="PHARMAFL_DATA", help="Dataset directory (default ~/.cache/pharmafl).")
    ] = None,
    export_job: Annotated[
        Path | None,
        typer.Option(
            help="Prepare the run (site stores, plan) and export the NVFlare job to this folder "
            "for `nvflare job submit` / ProdEnv, instead of running it."
        ),
    ] = None,
    consortium: Annotated[
        Path | None,
        typer.Option(
            help="A consortium.json (pharmafl consortium init): run the sites that set themselves up "
            "with pharmafl site init instead of simulating them from data.dataset."
        ),
    ] = None,
    site_homes: Annotated[
        Path | None, typer.Option(help="With --consortium: the folder holding each site's home, named by site id.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the final summary as one JSON document on stdout (nothing else).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar on stderr.")] = False,
) -> None:
    """Train federated (sites simulated from the dataset, or a consortium's own sites); write metrics, plots, ledger."""
    from pharmafl.models.cache import default_cache_dir
    from pharmafl.pipeline.config import load_run_config
    from pharmafl.pipeline.engines import export_federated, run_federated

    shortcuts = {"federation.engine": engine, "data.sites": sites, "federation.rounds": rounds}
    sets = [*(overrides or ()), *(f"{k}={json.dumps(v)}" for k, v in shortcuts.items() if v is not None)]
    cfg = load_run_config(config, sets)
    out = out or Path("runs") / cfg.name
    if cfg.ledger.enabled:
        _ensure_passphrase()
    if export_job is not None:
        job = export_federated(cfg, out, export_job, data_dir=data_dir, cache_dir=default_cache_dir())
        if as_json:
            console.emit_json({"job": str(job), "run_dir": str(out)})
            return
        console.stdout.print(f"exported the NVFlare job to {job}; site stores and plan in {out}")
        console.stdout.print(f"submit it with: nvflare job submit -j {job} --startup-kit <admin startup kit>")
        return
    if not quiet:
        console.stderr.print(
            f"[bold]{cfg.name}[/]: {cfg.data.sites} sites ({cfg.data.partition} partition of "
            f"{cfg.data.dataset}), {cfg.federation.rounds} rounds of {cfg.federation.strategy} "
            f"on the {cfg.federation.engine} engine -> {out}"
        )
    with console.progress(quiet=quiet, transient=False) as progress:
        listener = ProgressListener(progress, cfg.federation.rounds, cfg.data.sites)
        metrics = run_federated(
            cfg,
            out,
            data_dir=data_dir,
            cache_dir=default_cache_dir(),
            listeners=[listener],
            consortium=consortium,
            site_homes=site_homes,
        )
    if as_json:
        console.emit_json(run_summary(cfg, metrics, out))
    else:
        _summary(metrics, out)


def resume_command(
    run: Annotated[
        Path,
        typer.Argument(
            exists=True, file_okay=False, help="The run directory of a run that stopped, failed or was interrupted."
        ),
    ],
    reason: Annotated[
        str, typer.Option(help="Why the run is resumed, in words; recorded in the run_resumed entry.")
    ] = "resumed by the operator",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the final summary as one JSON document on stdout (nothing else).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar on stderr.")] = False,
) -> None:
    """Continue a run from its last completed round: verify its ledger and checkpoint, record run_resumed, go on."""
    from pharmafl.pipeline.engines import resume_federated
    from pharmafl.pipeline.resume import load_plan

    plan = load_plan(run)
    cfg = plan.cfg
    if cfg.ledger.enabled:
        _ensure_passphrase(confirm=False)
    if not quiet:
        console.stderr.print(
            f"[bold]{cfg.name}[/]: resuming {run} ({cfg.federation.rounds} rounds planned, "
            f"{cfg.federation.engine} engine)"
        )
    with console.progress(quiet=quiet, transient=False) as progress:
        listener = ProgressListener(progress, cfg.federation.rounds, cfg.data.sites)
        metrics = resume_federated(run, reason=reason, listeners=[listener])
    if as_json:
        console.emit_json(run_summary(cfg, metrics, plan.run_dir))
    else:
        _summary(metrics, plan.run_dir)


def _ensure_passphrase(confirm: bool = True) -> None:
    """The ledger's key store needs a passphrase: ``$PHARMAFL_KEY_PASSPHRASE``, else asked for
    on a terminal (on stderr) and handed to the engine's processes through the environment."""
    import os
    import sys

    from pharmafl.audit.keys import PASSPHRASE_ENV

    if os.environ.get(PASSPHRASE_ENV):
        return
    if not sys.stdin.isatty():
        from pharmafl.errors import ConfigError

        raise ConfigError(
            f"the run's ledger signs with keys encrypted under a passphrase: set {PASSPHRASE_ENV}, "
            "run on a terminal to be asked for it, or set ledger.enabled: false"
        )
    os.environ[PASSPHRASE_ENV] = typer.prompt(
        "Key-store passphrase for this run's signing keys", hide_input=True, confirmation_prompt=confirm, err=True
    )


def run_summary(cfg, metrics: dict, out: Path) -> dict:
    """What ``pharmafl run --json`` prints: the run directory, rounds, final metrics, the ledger's
    head, and the secure-aggregation and DP summaries where the run had them."""
    summary = {
        "run_dir": str(out),
        "name": cfg.name,
        "status": metrics.get("status"),
        "rounds": metrics.get("rounds"),
        "engine": metrics.get("engine"),
        "strategy": metrics.get("strategy"),
        "metrics": {k: v for k, v in metrics.items() if k.startswith("test_")},
        "sites": metrics.get("sites", {}),
        "model_sha256": metrics.get("model_sha256"),
        "ledger_head": _ledger_head(cfg, out),
    }
    if "epsilon_spent" in metrics:
        summary["privacy"] = {"mode": cfg.privacy.mode, "epsilon_spent": metrics["epsilon_spent"]}
    secure = _secure_rounds(out)
    if secure:
        summary["secure_aggregation"] = {
            "rounds": len(secure),
            "parties": secure[0]["secure"]["parties"],
            "excluded": [
                {"round": p["round"], "site": site, "reason": why}
                for p in secure
                for site, why in sorted(p["secure"]["excluded"].items())
            ],
        }
    return summary


def _ledger_head(cfg, out: Path) -> dict | None:
    """The ledger's latest signed checkpoint (to hand on as ``--trusted-head``), if the run kept one."""
    if not cfg.ledger.enabled:
        return None
    from pharmafl.audit.ledger import Ledger

    with Ledger.open(cfg.ledger.url or out / "ledger.db") as ledger:
        checkpoints = ledger.checkpoints()
    return json.loads(checkpoints[-1].to_json_line()) if checkpoints else None


def _summary(metrics: dict, out: Path) -> None:
    table = Table(
        title=f"{metrics['strategy']} on {metrics['engine']}: {metrics['status']} after {metrics['rounds']} rounds"
    )
    eps = metrics.get("epsilon_spent") or {}
    cols = ("", "test MSE", "test CI", "val MSE", "val CI", "pairs") + (("ε spent",) if eps else ())
    for col in cols:
        table.add_column(col, justify="right")
    extra = lambda who: (f"{eps[who]:.3f}",) if who in eps else ("",) if eps else ()  # noqa: E731
    if "test_mse" in metrics:
        table.add_row(
            "global (benchmark)",
            f"{metrics['test_mse']:.4f}",
            f"{metrics['test_ci']:.4f}",
            "",
            "",
            str(metrics.get("test_pairs", "")),
            *extra("server"),
            style="bold",
        )
    for site, m in sorted(metrics.get("sites", {}).items()):
        if "error" in m:
            table.add_row(site, "failed", "", "", "", "", *extra(site))
            continue
        table.add_row(
            site,
            f"{m.get('test_mse', float('nan')):.4f}",
            f"{m.get('test_ci', float('nan')):.4f}",
            f"{m.get('val_mse', float('nan')):.4f}",
            f"{m.get('val_ci', float('nan')):.4f}",
            str(m.get("test_pairs", "")),
            *extra(site),
        )
    console.stdout.print(table)
    _secure_summary(out)
    console.stdout.print(
        f"outputs in {out}: metrics.json, rounds.parquet, plots/, tensorboard/, model.safetensors"
        + (", ledger.db" if (out / "ledger.db").exists() else "")
    )


def _secure_rounds(out: Path) -> list[dict]:
    """The ``aggregated`` events of a securely aggregated run (none otherwise)."""
    log = out / "events.jsonl"
    if not log.is_file():
        return []
    return [
        e["payload"]
        for e in map(json.loads, log.read_text().splitlines())
        if e["type"] == "aggregated" and "secure" in e["payload"]
    ]


def _secure_summary(out: Path) -> None:
    """Under secure aggregation: who summed, and who was left out of which round and why."""
    rounds = _secure_rounds(out)
    if not rounds:
        return
    excluded = [(p["round"], site, why) for p in rounds for site, why in sorted(p["secure"]["excluded"].items())]
    console.stdout.print(
        f"secure aggregation: {len(rounds)} round(s) summed by parties {rounds[0]['secure']['parties']}; "
        f"the server saw only the sums; {len(excluded)} update(s) excluded"
    )
    for r, site, why in excluded:
        console.stdout.print(f"  round {r}: {site}: {why}")


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("resume")(resume_command)
