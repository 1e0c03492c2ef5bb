"""NVFlare Client API script: a thin receive / train / send loop around the site code.

Copied into the job as ``client.py`` and run by NVFlare at every site. The site id is
NVFlare's site name; everything the site does is :class:`pharmafl.sites.site.Site`, exactly
as in the in-process engine. Where the site finds its plan and its home:

- simulator and POC (``--plan RUN/plan.json``, absolute): the run directory on this machine,
  each site's home as the plan names it;
- a provisioned system (``--job-plan FILE``): the plan the job carries, ``FILE`` beside this
  script in the app's ``custom/`` folder, which NVFlare deploys to
  ``KIT/<job id>/app_<site>/custom/`` (``nvflare.apis.workspace.Workspace``); the site's
  home is what its own kit's ``KIT/local/pharmafl.json`` names (:mod:`pharmafl.sites.kit`).
"""

from __future__ import annotations

import argparse
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np


def plan_at_site(custom_dir: Path, plan_file: str, site: str, job_id: str):
    """The plan a provisioned job carries, with ``site``'s home (and cache) from its kit.

    ``custom_dir`` is the folder this script runs from, ``KIT/<job_id>/app_<site>/custom``.
    """
    from nvflare.apis.workspace import Workspace

    from pharmafl.errors import ConfigError
    from pharmafl.pipeline.run import RunPlan
    from pharmafl.sites.kit import site_of_kit

    custom = Path(custom_dir).absolute()
    if Path(plan_file).name != plan_file:
        raise ConfigError(f"--job-plan {plan_file!r} must name a file of the job's custom/ folder, not a path")
    kit = custom.parents[2]
    try:
        expected = Path(Workspace(str(kit), site).get_app_custom_dir(job_id))
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"{custom} is not in an NVFlare client workspace ({exc}); a provisioned job runs from "
            "the site's startup kit"
        ) from None
    if expected.resolve() != custom.resolve():
        raise ConfigError(
            f"{custom} is not {site}'s app folder of job {job_id} ({expected}); the job runs from an unexpected place"
        )
    home, cache = site_of_kit(kit, site)
    plan = RunPlan.load(custom / plan_file)
    return replace(plan, site_homes={site: str(home)}, cache_dir=cache)


def main(argv: list[str] | None = None) -> None:
    import nvflare.client as flare

    from pharmafl.pipeline.nvflare_wire import (
        WITNESS_KEY,
        WITNESS_ONLY,
        decode_task,
        model_from_declined,
        model_from_error,
        model_from_final_metrics,
        model_from_result,
        model_witness_only,
        with_witness,
        witness_reply,
    )
    from pharmafl.pipeline.run import RunPlan, make_site
    from pharmafl.sites.site import Declined

    parser = argparse.ArgumentParser()
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--plan", help="simulator / POC: absolute path of RUN/plan.json")
    where.add_argument("--job-plan", help="provisioned system: the plan file the job carries beside this script")
    args = parser.parse_args(argv)

    flare.init()
    name = flare.get_site_name()
    if args.plan is not None:
        plan = RunPlan.load(Path(args.plan))
    else:
        plan = plan_at_site(Path(__file__).parent, args.job_plan, name, flare.get_job_id())
    site = make_site(plan, name)
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        meta = received.meta or {}
        answer = witness_reply(site, (meta.get(WITNESS_KEY) or {}).get(name))
        if meta.get(WITNESS_ONLY):
            flare.send(with_witness(model_witness_only(), answer))
            continue
        state = {k: np.asarray(v, dtype=np.float32) for k, v in received.params.items()}
        try:
            r, instructions = decode_task(meta)
        except ValueError as exc:  # a server that is not pharmafl's, or broken: nothing to train on
            flare.send(with_witness(model_from_error(0, f"unusable task: {exc}"), answer))
            continue
        if instructions is None:
            flare.send(with_witness(model_from_final_metrics(site.evaluate(state)), answer))
            continue
        try:
            out = site.fit(r, state, instructions)
            sent = model_from_declined(out) if isinstance(out, Declined) else model_from_result(out)
        except Exception as exc:  # reported to the coordinator; the site stays for later rounds
            traceback.print_exc()
            sent = model_from_error(r, f"{type(exc).__name__}: {exc}")
        flare.send(with_witness(sent, answer))


if __name__ == "__main__":
    main()
