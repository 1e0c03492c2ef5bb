"""The multi-user deployment at ten sites: the wall time of each phase and of each round.

    sudo -E python bench/deployment.py [--sites 10] [--rounds 2] [--drugs-per-site 6] [--targets 30]

Runs tests/pipeline/test_deployment.py's procedure (tests/pipeline/multiuser.py) with
``--sites`` sites: every site, the coordinator, the server's party, the helper and the
regulator a Unix user of its own with a 0700 home, the NVFlare server and clients started
from their kits, the party services from their homes, all on 127.0.0.1; a DP-SGD + secure
aggregation run of the narrow test model. Each site holds ``--drugs-per-site`` DAVIS compounds
(disjoint) x ``--targets`` targets (every 15th, at most 30): 180 pairs by default, 240 in the
3-site test.
Needs root and ``$PHARMAFL_DATA`` (the DAVIS tidy tables). Prints, per phase:

* setup: users and homes, each site's tables, ``site init`` and ``party init`` (all at once);
* provisioning: cards to the coordinator, ``consortium init`` with ``nvflare provision``, the
  roster and kits out, every ``accept`` and ``nvflare-config``;
* start: the two party services, the NVFlare server, every client registered;
* run: ``pharmafl run`` through the admin kit (job submission, deployment, every round, the
  witness-only exchange), and the wall time of each round from the ledger's timestamps with
  the parties' share of it (``aggregated.secure.seconds``);
* verify: the coordinator's ``ledger verify`` and ``export``, the regulator's offline verify
  (every site a witness of every checkpoint), every site's ``site audit``.

CPU heavy (each site is an NVFlare client and job process): run it once, on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from pharmafl.tests.pipeline.multiuser import Deployment, davis_tables
from pharmafl.tests.pipeline.unixusers import missing_tools


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--drugs-per-site", type=int, default=6)
    ap.add_argument("--targets", type=int, default=30)
    args = ap.parse_args()
    if why := missing_tools():
        print(f"bench/deployment.py {why}", file=sys.stderr)
        return 2
    shared = Path(os.environ.get("PHARMAFL_DATA", ""))
    if not (shared / "davis_deepdta_pairs.csv.gz").is_file():
        print("set PHARMAFL_DATA to the folder of the DAVIS tidy tables", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-deployment-") as tmp:
        tables = davis_tables(shared, Path(tmp) / "davis", drugs=args.sites * args.drugs_per_site, targets=args.targets)
        started = time.perf_counter()
        with Deployment(args.sites, tables, rounds=args.rounds, log=lambda line: print(line, flush=True)) as d:
            d.set_up()
            d.provision()
            d.start()
            metrics = d.run()
            verified = d.verify()
            rounds = d.round_seconds(verified["bundle"])
            entries = [json.loads(x) for x in (verified["bundle"] / "entries.jsonl").read_text().splitlines()]
            parties = {
                e["payload"]["round"]: e["payload"]["secure"]["seconds"] for e in entries if e["type"] == "aggregated"
            }
            pairs = sum(
                json.loads((p.home / "site" / "site-card.json").read_text())["counts"]["pairs"]
                for p in d.site_parties.values()
            )
            users = len(d.everyone)
        wall = time.perf_counter() - started  # with the teardown
    if metrics["status"] != "completed":
        print(f"the run did not complete: {metrics['status']}", file=sys.stderr)
        return 1
    print(
        f"\nmulti-user deployment: {args.sites} sites ({pairs} pairs in all), {users} Unix users, "
        f"{args.rounds} rounds, DP-SGD + secure aggregation, NVFlare prod on 127.0.0.1, "
        f"{os.cpu_count()} CPU cores"
    )
    for phase, seconds in d.seconds.items():
        print(f"  {phase:<13} {seconds:>7.1f} s")
    print(f"  {'total':<13} {sum(d.seconds.values()):>7.1f} s   (wall with teardown {wall:.1f} s)")
    print(f"  run's own time (metrics.json seconds): {metrics['seconds']:.1f} s")
    for r, seconds in rounds.items():
        print(f"  round {r}: {seconds:.1f} s  (parties: {json.dumps(parties.get(r, {}), sort_keys=True)})")
    print(f"  ledger: {verified['coordinator']}")
    print(f"  regulator: {verified['regulator']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
