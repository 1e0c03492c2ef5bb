"""The NVFlare engine: one job definition, run in the simulator, in POC, or exported.

The job is NVFlare 2.9's ``FedAvgRecipe`` with two pharmafl components on the server
(:class:`~pharmafl.pipeline.nvflare_server.PharmaflAggregator`, which runs the coordinator,
and :class:`~pharmafl.pipeline.nvflare_server.PlanPersistor`) and
:mod:`pharmafl.pipeline.nvflare_client` as every site's Client API script. ``sim`` runs it in
``SimEnv`` (each site a process), ``poc`` in ``PocEnv`` (separate server and client processes
talking over mutual TLS on this machine), ``prod`` in ``ProdEnv`` (a provisioned, running
system, :mod:`pharmafl.pipeline.provision`), and :func:`export_job` writes that job for
``nvflare job submit``.

The job for a provisioned system (``portable``) names no path of any machine and holds no
site data: the plan travels in every site's app (``custom/pharmafl_plan.json``, the plan as
:func:`site_view` gives it), each site finds its home through its own kit's local config
(:func:`pharmafl.pipeline.nvflare_client.plan_at_site`), and the server finds the run
directory by its name in the runs folder its kit names. It is deployed to the consortium's
sites by name (one app per site), never to ``@ALL``.

The server process owns the run's listeners (ledger, outputs) and also writes
``RUN/events.jsonl``, which this driver follows to show progress.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pharmafl.errors import ConfigError, RefusedError
from pharmafl.pipeline.eventlog import EventFollower
from pharmafl.pipeline.events import Listener
from pharmafl.pipeline.nvflare_wire import STOP_METRIC
from pharmafl.pipeline.run import RunPlan

JOB_NAME = "pharmafl"
JOB_PLAN = "pharmafl_plan.json"
SHIM_MODULE = "pharmafl_nvflare"
SHIM = '''"""pharmafl's NVFlare server components, as NVFlare's job config names them.

The code lives in the installed pharmafl package (pharmafl.pipeline.nvflare_server); NVFlare
copies this shim into the job's custom/ folder.
"""

from pharmafl.pipeline.nvflare_server import PharmaflAggregator as _Aggregator
from pharmafl.pipeline.nvflare_server import PharmaflFedAvg as _FedAvg
from pharmafl.pipeline.nvflare_server import PlanPersistor as _Persistor


class PharmaflAggregator(_Aggregator):
    pass


class PharmaflFedAvg(_FedAvg):
    pass


class PlanPersistor(_Persistor):
    pass
'''


class NVFlareRunError(RefusedError):
    """The NVFlare job failed; the message names its logs."""


@contextlib.contextmanager
def _cwd(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _poc_workspace(plan: RunPlan):
    """POC mode keeps its workspace under ``RUN/nvflare/poc`` unless the user set
    ``NVFLARE_POC_WORKSPACE``; the variable is restored afterwards."""
    if plan.cfg.federation.nvflare_env != "poc" or "NVFLARE_POC_WORKSPACE" in os.environ:
        yield
        return
    os.environ["NVFLARE_POC_WORKSPACE"] = str(plan.run_dir / "nvflare" / "poc")
    try:
        yield
    finally:
        del os.environ["NVFLARE_POC_WORKSPACE"]


def _quiet_log_config(path: Path) -> str:
    """NVFlare's logging config with the console at ERROR (its files keep INFO): NVFlare warns
    on every normal job end; pharmafl reports problems itself."""
    import nvflare.fuel.utils as fu

    config = json.loads((Path(fu.__file__).parent / "log_config.json").read_text())
    config["handlers"]["consoleHandler"]["level"] = "ERROR"
    path.write_text(json.dumps(config, indent=1))
    return str(path)


def _load_shim(job_dir: Path):
    """Import the shim module from ``job_dir``: NVFlare copies a component's source file into
    the job only when the file's path matches its module name, which the editable install's
    ``pharmafl -> repository root`` mapping does not give."""
    path = job_dir / f"{SHIM_MODULE}.py"
    path.write_text(SHIM)
    spec = importlib.util.spec_from_file_location(SHIM_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[SHIM_MODULE] = module
    spec.loader.exec_module(module)
    return module


def _name_only(value: str) -> str:
    return Path(value).name if "/" in value or os.sep in value else value


def site_view(plan: RunPlan) -> RunPlan:
    """The plan as a provisioned job carries it to the sites: what they need, no path.

    No site homes and no cache folder (each site's kit names its own), no ledger URL (the
    coordinator's, credentials and all), the dataset, benchmark and admin kit by their last
    path component only (the sites never use them; the server reads its own ``plan.json``).
    """
    cfg, fed = plan.cfg, plan.cfg.federation
    admin_kit = _name_only(fed.nvflare_admin_kit) if fed.nvflare_admin_kit else None
    data = replace(cfg.data, dataset=_name_only(cfg.data.dataset), benchmark=_name_only(cfg.data.benchmark))
    cfg = replace(
        cfg, data=data, ledger=replace(cfg.ledger, url=None), federation=replace(fed, nvflare_admin_kit=admin_kit)
    )
    return replace(plan, cfg=cfg, site_homes=None, cache_dir=None)


def build_recipe(plan: RunPlan, *, portable: bool = False, resume=None):
    """The job, with the plan written to ``RUN/plan.json`` and the client script beside it.

    ``portable``: the job for a provisioned system (module docstring), else the simulator's
    and POC's, which name the plan by its absolute path on this machine. ``resume``: the
    :class:`~pharmafl.pipeline.resume.ResumePoint` the job continues from (the server checks
    it again against the ledger); its controller starts at the next round number.
    """
    from nvflare.client.config import ExchangeFormat, TransferType
    from nvflare.fuel.utils.constants import FrameworkType
    from nvflare.recipe import FedAvgRecipe
    from nvflare.recipe.utils import set_per_site_config

    from pharmafl.pipeline import nvflare_client

    if any(c.isspace() for c in str(plan.run_dir.resolve())):
        raise ConfigError(
            f"the run directory {plan.run_dir} contains whitespace, which NVFlare's script "
            "arguments cannot carry; choose another --out"
        )
    job_dir = plan.run_dir / "nvflare"
    job_dir.mkdir(parents=True, exist_ok=True)
    plan_path = (plan.run_dir / "plan.json").resolve()
    if not plan_path.is_file() or plan_path.read_text() != plan.to_json():
        plan_path.write_text(plan.to_json())
    shutil.copyfile(nvflare_client.__file__, job_dir / "client.py")
    components = _load_shim(job_dir)
    if portable:
        (job_dir / JOB_PLAN).write_text(site_view(plan).to_json())
        server_plan, train_args = f"{plan.run_dir.name}/plan.json", f"--job-plan {JOB_PLAN}"
    else:
        server_plan, train_args = str(plan_path), f"--plan {plan_path}"

    fed = plan.cfg.federation
    remaining = fed.rounds - (0 if resume is None else resume.steps_done)
    first = 0 if resume is None else resume.next_round - 1  # NVFlare counts from 0, pharmafl from 1

    class Recipe(FedAvgRecipe):
        def _get_controller_kwargs(self):
            # a site whose result errors is left out of the round (the coordinator decides
            # whether enough remain); stop when the aggregator says so
            return {"ignore_result_error": True, "task_check_period": 0.1, "start_round": first}

        def _create_controller(self, persistor_id, model_params, model_aggregator):
            return components.PharmaflFedAvg(
                num_clients=self.min_clients,
                num_rounds=self.num_rounds,
                persistor_id=persistor_id,
                model=model_params,
                aggregator=model_aggregator,
                stop_cond=self.stop_cond,
                task_name="train",
                round_timeout_s=fed.round_timeout_s,
                **self._get_controller_kwargs(),
            )

    with _cwd(job_dir):  # FedAvgRecipe resolves a relative train_script against the cwd (also later)
        recipe = Recipe(
            name=JOB_NAME,
            min_clients=len(plan.sites),
            num_rounds=remaining + 2,  # + the final evaluation, + cosigning run_ended
            train_script="client.py",
            train_args=train_args,
            aggregator=components.PharmaflAggregator(
                plan_path=server_plan, resume_reason=None if resume is None else resume.reason
            ),
            model_persistor=components.PlanPersistor(plan_path=server_plan),
            framework=FrameworkType.NUMPY,
            server_expected_format=ExchangeFormat.NUMPY,
            params_transfer_type=TransferType.FULL,
            key_metric=STOP_METRIC,
            key_metric_mode="max",
            stop_cond=f"{STOP_METRIC} >= 1",
        )
        if portable:  # the consortium's sites by name, never @ALL; then the plan into each site's app
            set_per_site_config(recipe, {site: {} for site in plan.sites})
            recipe.add_client_file(JOB_PLAN)
    recipe.add_server_config({"server": {"task_request_interval": 0.1}})
    return recipe


def export_job(plan: RunPlan, job_dir: Path) -> Path:
    """Write the job for ``nvflare job submit`` to a provisioned system (``portable``: no
    path of any machine in it; the server must hold ``plan.run_dir`` in its kit's runs folder)."""
    job_dir = Path(job_dir).resolve()
    recipe = build_recipe(plan, portable=True)
    with _cwd(plan.run_dir / "nvflare"):
        recipe.export(str(job_dir))
    return Path(job_dir) / JOB_NAME


def stop_children(grace_s: float = 10.0) -> list[int]:
    """Terminate every process this one started (NVFlare's simulator and its workers), then kill
    what is left after ``grace_s``; returns their pids. The run stays resumable: its coordinator
    dies with them, and ``pharmafl resume`` continues from the last completed round."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    return [c.pid for c in children]


class NVFlareEngine:
    def run(self, plan: RunPlan, listeners: Sequence[Listener] = (), *, resume=None) -> dict:
        """One session of the run as an NVFlare job (``resume``: a verified
        :class:`~pharmafl.pipeline.resume.ResumePoint` to continue from)."""
        prod = plan.cfg.federation.nvflare_env == "prod"
        if prod:
            plan.cfg.federation.admin_kit()  # a bad admin kit is refused before the job is built
        recipe = build_recipe(plan, portable=prod, resume=resume)
        env = self._env(plan)
        metrics_path = plan.run_dir / "metrics.json"
        before = metrics_path.stat().st_mtime_ns if metrics_path.is_file() else None

        def deliver(event):
            for listener in listeners:
                listener.on_event(event)

        trace = plan.run_dir / "events.jsonl"
        follower = EventFollower(trace, deliver, start=trace.stat().st_size if trace.is_file() else 0)
        follower.start()
        error = None
        try:
            with _cwd(plan.run_dir / "nvflare"), _poc_workspace(plan):  # script resolved at execute time
                run = recipe.execute(env)
                run.get_result()
        except (RuntimeError, SystemExit) as exc:
            error = exc
        except KeyboardInterrupt:  # Ctrl-C: the simulator runs in sessions of its own and would go on
            stop_children()
            raise
        finally:
            follower.stop()
            for listener in listeners:
                listener.close()
        if metrics_path.is_file() and before is not None and metrics_path.stat().st_mtime_ns == before:
            metrics_path = plan.run_dir / ".no-new-metrics"  # an earlier session's figures: this one wrote none
        if not metrics_path.is_file() and prod:
            raise NVFlareRunError(
                f"the NVFlare job ended without results in {plan.run_dir} ({error!r}); the server "
                f"writes them to <runs>/{plan.run_dir.name}, <runs> as its kit's "
                "local/pharmafl.json names it, which must be this folder's parent; see the server's "
                "log, SERVER_KIT/<job id>/log.txt"
            )
        if not metrics_path.is_file():
            logs = sorted(str(p) for p in (plan.run_dir / "nvflare").rglob("log.txt"))
            raise NVFlareRunError(f"the NVFlare job ended without results ({error!r}); see the logs: {logs[:3]}")
        return json.loads(metrics_path.read_text())

    @staticmethod
    def _env(plan: RunPlan):
        from nvflare.recipe import PocEnv, ProdEnv, SimEnv

        job_dir = plan.run_dir / "nvflare"
        if plan.cfg.federation.nvflare_env == "prod":
            from pharmafl.pipeline.provision import admin_name

            kit = plan.cfg.federation.admin_kit()
            return ProdEnv(startup_kit_location=str(kit), username=admin_name(kit))
        if plan.cfg.federation.nvflare_env == "poc":
            return PocEnv(clients=list(plan.sites))
        return SimEnv(
            clients=list(plan.sites),
            num_threads=len(plan.sites),
            workspace_root=str(job_dir / "workspace"),
            log_config=_quiet_log_config(job_dir / "log_config.json"),
        )
