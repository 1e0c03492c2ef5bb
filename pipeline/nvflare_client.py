"""NVFlare Client API script: a thin receive / train / send loop around the site code.

Copied into the job as ``client.py`` and run by NVFlare at every site with
``--plan RUN/plan.json``. The site id is NVFlare's site name; everything the site does is
:class:`pharmafl.sites.site.Site`, exactly as in the in-process engine.
"""

from __future__ import annotations

import argparse
import traceback
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    import nvflare.client as flare

    from pharmafl.pipeline.nvflare_wire import (
        WITNESS_KEY,
        WITNESS_ONLY,
        decode_instructions,
        model_from_declined,
        model_from_error,
        model_from_final_metrics,
        model_from_result,
        model_witness_only,
        with_witness,
        witness_reply,
    )
    from pharmafl.sites.site import Declined
    from pharmafl.pipeline.run import RunPlan, make_site
    from pharmafl.pipeline.strategies import build_strategy

    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", required=True, help="absolute path of RUN/plan.json")
    args = parser.parse_args(argv)
    plan = RunPlan.load(Path(args.plan))

    flare.init()
    name = flare.get_site_name()
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
        r = received.current_round + 1
        state = {k: np.asarray(v, dtype=np.float32) for k, v in received.params.items()}
        if r > 1 or "pharmafl_instructions" in meta:
            instructions = decode_instructions(meta)  # KeyError: a broken server
        else:  # round 1: the initial model carries no instructions; derive them as the server does
            fed = plan.cfg.federation
            strategy = build_strategy(fed.strategy, fed.strategy_options, n_sites=len(plan.sites))
            instructions = strategy.instructions(r, state)
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
