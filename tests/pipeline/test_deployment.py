"""The test that proves it (issue 13): a provisioned deployment in which every party is a Unix user.

On one machine, the coordinator, the server's aggregation party, the helper party, three
sites and a regulator are seven Unix users with 0700 homes (tests/pipeline/multiuser.py has
the layout). They go through docs/deployment.md step by step, exchanging only cards, the
roster, kits, endpoints and the ledger bundle; the NVFlare server and clients start from
their kits, the party services from their homes, all on 127.0.0.1. A 3-site x 2-round run
under DP-SGD and secure aggregation completes; its ledger verifies with the sites'
signatures and every site's cosignature; each site's audit passes; and no user can read
another's home, while every process ran as the user of the party it serves.

Needs root (CI runs the tests as root): skipped otherwise. ``bench/deployment.py`` runs the
same with ten sites and prints the time of each phase.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pharmafl.audit.messages import canonical, statement_message

from .multiuser import HELPER, SERVER_HOST, SERVER_PARTY, Deployment
from .unixusers import missing_tools

SITES = ("site-01", "site-02", "site-03")
ROUNDS = 2
OK_LINE = re.compile(r"^OK: (\d+) entries, (\d+) checkpoints \((\d+) witnessed, quorum (\d+) of (\d+) sites\)")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))]


@pytest.fixture(scope="module")
def deployed(small_davis: Path):
    """The whole deployment, run once: set up, provision, start, run, verify; torn down after the module."""
    with Deployment(len(SITES), small_davis, rounds=ROUNDS) as d:
        d.set_up()
        d.provision()
        d.start()
        d.metrics = d.run()
        d.verified = d.verify()
        d.entries = [json.loads(line) for line in (d.verified["bundle"] / "entries.jsonl").read_text().splitlines()]
        total = sum(d.seconds.values())
        print(
            f"\n[deployment] {len(SITES)} sites x {ROUNDS} rounds: {d.seconds} (total {total:.0f} s), "
            f"rounds {d.round_seconds(d.verified['bundle'])}"
        )
        yield d


def test_the_secure_dp_run_completes(deployed):
    m = deployed.metrics
    assert m["status"] == "completed" and m["rounds"] == ROUNDS, m
    assert {e["payload"]["round"] for e in deployed.entries if e["type"] == "aggregated"} == {1, 2}
    aggregated = [e["payload"] for e in deployed.entries if e["type"] == "aggregated"]
    assert all(
        a["participants"] == list(SITES) and a["secure"]["parties"] == [SERVER_PARTY, HELPER] for a in aggregated
    ), aggregated


def test_the_ledger_verifies_with_the_sites_signatures_and_witness_quorum(deployed):
    coordinator = OK_LINE.match(deployed.verified["coordinator"])
    assert coordinator, deployed.verified["coordinator"]
    entries, checkpoints, witnessed, quorum, sites = map(int, coordinator.groups())
    assert entries == len(deployed.entries) and witnessed == checkpoints >= 1 and (quorum, sites) == (2, 3)
    regulator = OK_LINE.match(deployed.verified["regulator"])  # offline, roster from a site, every site a witness
    assert regulator and regulator.groups()[1:] == (str(checkpoints), str(checkpoints), "3", "3"), regulator.group(0)


def test_the_parties_and_the_sites_signed_their_statements(deployed):
    """secure_shares and privacy_spent of every site, party_registered and party_round of every
    party, each under the key its card pinned in run_started."""
    started = next(e["payload"] for e in deployed.entries if e["type"] == "run_started")
    cards = {**started["consortium"]["cards"], **started["consortium"]["parties"]}
    keys = {name: Ed25519PublicKey.from_public_bytes(bytes.fromhex(card["public_key"])) for name, card in cards.items()}
    signed = {}
    for e in deployed.entries:
        st = e["payload"].get("statement")
        if st is None:
            continue
        assert st["run_id"] == started["run_id"] and st["type"] == e["type"]
        assert st["payload_sha256"] == hashlib.sha256(canonical(st["payload"]).encode()).hexdigest()
        keys[st["site"]].verify(
            bytes.fromhex(st["signature"]),
            statement_message(st["run_id"], st["round"], st["site"], st["type"], st["payload_sha256"]),
        )  # raises if forged
        signed.setdefault((e["type"], st["site"]), []).append(st["round"])
    rounds = list(range(1, ROUNDS + 1))
    for site in SITES:
        assert signed[("secure_shares", site)] == rounds and signed[("privacy_spent", site)] == rounds
    for party in (SERVER_PARTY, HELPER):
        assert signed[("party_registered", party)] == [None] and signed[("party_round", party)] == rounds
    spent = [e["payload"]["statement"]["payload"] for e in deployed.entries if e["type"] == "privacy_spent"]
    assert all(0 < s["epsilon_total"] <= 8.0 for s in spent)


def test_every_site_audits_the_ledger_against_its_own_home(deployed):
    for site, line in deployed.verified["audits"].items():
        mine = [e for e in deployed.entries if (e["payload"].get("statement") or {}).get("site") == site]
        assert line.startswith(f"OK: {site}: {len(mine)} signed statement(s) of 1 run(s)"), line


def test_no_user_could_read_another_users_home(deployed):
    for user, (mode, owner, uid) in deployed.home_modes().items():
        assert (mode, owner) == (0o700, uid), user
    for p in deployed.everyone:  # no group shares a home: each user is in its own group only
        assert os.getgrouplist(p.user, p.gid) == [p.gid], grp.getgrgid(p.gid).gr_name
    attempts = deployed.cross_reads()  # as every user, ls every home and read a file of it
    assert len(attempts) == 2 * len(deployed.everyone) ** 2
    own = [a for a in attempts if a[0] == a[1]]
    assert all(rc == 0 for *_, rc, _ in own), own  # the control: each user reads its own home
    allowed = [a for a in attempts if a[0] != a[1] and (a[3] == 0 or "Permission denied" not in a[4])]
    assert not allowed, allowed
    assert deployed.temp_leftovers() == []  # nothing in the machine's shared /tmp (each user has ~/tmp)
    jobs = deployed.kits[SERVER_HOST] / "storage" / "jobs-storage"
    assert any(jobs.iterdir()), "the server's job store is in its kit, not in /tmp/nvflare"


def test_every_process_ran_as_the_user_of_its_party(deployed):
    procs = [p for p in deployed.processes if p.cmdline]
    assert {p.user for p in procs if p.cmdline.startswith("setpriv ")} <= {"root"}  # the launcher, before its exec
    assert not [p for p in procs if p.uid < 0], "a process with mixed real/effective uids"
    for p in (p for p in procs if not p.cmdline.startswith("setpriv ")):  # what names a home ran as its user
        for owner in deployed.everyone:
            if f"{owner.home}/" in p.cmdline:
                assert p.user == owner.user, p
    users = {p.pid: p.user for p in procs}

    def find(*needles: str) -> list:  # the programs, not their launch (setpriv, then env -i, exec in place)
        return [
            p
            for p in procs
            if all(n in p.cmdline for n in needles) and not p.cmdline.startswith(("setpriv ", "env -i "))
        ]

    for name, party in deployed.parties.items():  # the service and its MPC worker (the dealer at the helper)
        (service,) = find("party serve", f"{party.home}/party")
        workers = [p for p in procs if p.ppid == service.pid and "multiprocessing.spawn" in p.cmdline]
        assert service.user == party.user and len(workers) == (2 if name == HELPER else 1), workers
        assert {w.user for w in workers} == {party.user}
    coord = deployed.coord.user
    assert {p.user for p in find("nvflare.private.fed.app.server.server_train")} == {coord}
    assert {p.user for p in find("nvflare.private.fed.app.server.runner_process")} == {coord}  # the job: coordinator
    assert {p.user for p in find("pharmafl run ")} == {coord}
    for site in SITES:
        user = deployed.site_parties[site].user
        kit = f"/home/{user}/inbox/kit"
        assert {p.user for p in find("nvflare.private.fed.app.client.client_train", kit)} == {user}
        jobs = find("nvflare.private.fed.app.client.worker_process", kit)  # where the site trains
        assert jobs and {p.user for p in jobs} == {user} and all(users.get(p.ppid) == user for p in jobs)


def test_only_cards_the_roster_kits_endpoints_and_the_bundle_crossed(deployed):
    crossed = {(a, b, what) for a, b, what in deployed.handed}
    coord, reg = deployed.coord.user, deployed.regulator.user
    sites = {s: deployed.site_parties[s].user for s in SITES}
    parties = {n: p.user for n, p in deployed.parties.items()}
    expected = {(u, coord, f"{s}.card.json") for s, u in {**sites, **parties}.items()}
    expected |= {(coord, u, "consortium.json") for u in [*sites.values(), *parties.values()]}
    expected |= {(coord, u, "kit") for u in [*sites.values(), parties[HELPER]]}
    expected |= {(u, coord, f"endpoint {n}") for n, u in parties.items()}
    expected |= {(coord, u, "ledger-bundle") for u in sites.values()}
    expected |= {(coord, reg, "bundle"), (sites["site-01"], reg, "consortium.json")}
    assert crossed == expected
    for user in [*sites.values(), *parties.values(), reg]:  # no pharmafl key store ever crossed
        assert not list((Path("/home") / user / "inbox").rglob("keys")), user
