"""Atomic appends under SIGKILL, and concurrent writers that cannot fork the chain (SQLite)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from pharmafl.audit.keys import KeyStore
from pharmafl.audit.ledger import Ledger
from pharmafl.audit.verify import verify_path

from .conftest import FAST_SCRYPT, PASSPHRASE

WRITER = str(Path(__file__).with_name("writer_proc.py"))


def start_writer(target: str, keys: Path, actor: str, count: int, go: Path | None = None) -> subprocess.Popen:
    args = [sys.executable, WRITER, target, str(keys), actor, str(count)] + ([str(go)] if go else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_mid_append(target: str, keys: Path, rounds: int = 5) -> None:
    """SIGKILL a writer at random moments while it appends; after each kill the ledger verifies."""
    rng = random.Random(4)
    for r in range(rounds):
        writer = start_writer(target, keys, f"site-{r:02d}", 0)
        seen = 0
        while seen < 3 + r * 5:  # wait until it is appending in earnest
            line = writer.stdout.readline()
            assert line.startswith("committed"), writer.stderr.read()
            seen += 1
        reported = int(line.split()[1])
        time.sleep(rng.uniform(0, 0.05))
        os.kill(writer.pid, signal.SIGKILL)
        rest = writer.stdout.read().split()
        writer.wait()
        assert writer.returncode == -signal.SIGKILL
        reported = max([reported] + [int(x) for x in rest if x.isdigit()])
        summary = verify_path(target)  # raises on a half entry or broken chain
        assert summary.line().startswith("OK: ")
        with Ledger.open(target) as ledger:
            mine = [e for e in ledger.entries() if e.actor == f"site-{r:02d}" and e.type != "actor_key"]
        assert [e.data["i"] for e in mine] == list(range(len(mine)))  # a prefix of what it sent
        assert reported <= len(mine) <= reported + 20  # at most the batch in flight was lost


def test_sigkill_mid_append_never_breaks_the_chain(tmp_path: Path) -> None:
    target = str(tmp_path / "ledger.db")
    kill_mid_append(target, tmp_path / "keys")
    with Ledger.open(target, KeyStore(tmp_path / "keys", PASSPHRASE, scrypt_n=FAST_SCRYPT)) as ledger:
        ledger.record("server", "run_ended", status="stopped")  # the survivor carries on
        ledger.checkpoint()
    assert verify_path(target).line().startswith("OK: ")


def concurrent_writers(target: str, keys: Path, go: Path, writers: int = 4, count: int = 120) -> None:
    """Several processes append at once; the result is one unforked chain with every entry."""
    procs = [start_writer(target, keys, f"site-{w:02d}", count, go) for w in range(writers)]
    time.sleep(1.0)
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert verify_path(target).line().startswith(f"OK: {writers * count + writers + 1} entries")
    by_writer, order = defaultdict(list), []
    with Ledger.open(target) as ledger:
        for e in ledger.entries():
            if e.type != "actor_key" and "writer" in e.data:
                by_writer[e.data["writer"]].append(e.data["i"])
                order.append(e.data["writer"])
    assert dict(by_writer) == {f"site-{w:02d}": list(range(count)) for w in range(writers)}  # all, in order
    switches = sum(a != b for a, b in zip(order, order[1:]))
    assert switches > writers  # they really did write at the same time, not one after another


def test_concurrent_writers_cannot_fork_the_chain(tmp_path: Path) -> None:
    concurrent_writers(str(tmp_path / "ledger.db"), tmp_path / "keys", tmp_path / "go")
