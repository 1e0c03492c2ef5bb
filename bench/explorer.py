"""Explorer benchmark: start-up (verification + index) and page times on a large ledger.

    .venv/bin/python bench/explorer.py                 # 1M entries (about 10 minutes on 2 cores)
    .venv/bin/python bench/explorer.py --entries 100000
    .venv/bin/python bench/explorer.py --keep DIR      # reuse (or keep) the generated ledger in DIR

The ledger is a run as the trust domains write it (``bench/ledger.py``'s ``WitnessedRun``: 10
sites, every site entry a site-signed statement, every round's checkpoint cosigned by the 10
witnesses). The real command is started (``pharmafl explore RUN``), as a user would; start-up is
the time until it prints its URL (it verifies every entry, statement and cosignature first).
Each page is then fetched over HTTP from 127.0.0.1 (first fetch, then the median of 5), as a
browser would after start-up. Goal (issue 17): overview, a filtered trail page and an entry with
its proof each <= 300 ms. Prints figures only; tests never assert timings.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ledger import WitnessedRun, machine  # noqa: E402  (bench/ledger.py: the run-shaped ledger writer)


def pages(n: int) -> list[tuple[str, str]]:
    mid = n // 2
    return [
        ("overview", "/"),
        ("trail, first page", "/trail"),
        ("trail filtered by type + site, from the middle", f"/trail?type=privacy_spent&site=site-03&after={mid}"),
        ("trail filtered by round", f"/trail?round={max(1, n // 68)}"),
        ("trail, last page", f"/trail?before={n}"),
        ("trail text search (common term)", "/trail?q=update_hash"),
        ("entry with its inclusion proof", f"/entry/{mid + 7}"),
        ("entry JSON (/api/entry)", f"/api/entry/{mid + 7}"),
        ("lineage (5 rounds)", f"/lineage?first={max(1, n // 68)}"),
        ("privacy", "/privacy"),
        ("alarms and drift", "/alarms"),
        ("signatures and Part 11 matrix", "/signatures"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="folder for the generated run (reused when it holds one)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="pharmafl-bench-explorer-"))
    run = root / f"run-{args.entries}"
    print(f"# explorer benchmark, {machine()}")
    if not (run / "ledger.db").is_file():
        run.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        n = WitnessedRun(str(run / "ledger.db")).write(args.entries)
        print(f"generated a {n:,}-entry run ledger in {time.perf_counter() - t:.1f} s")
    size = (run / "ledger.db").stat().st_size
    cli = [sys.executable, "-m", "pharmafl.pipeline.cli", "explore", str(run), "--quiet"]
    t = time.perf_counter()
    proc = subprocess.Popen(
        cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2]
    )
    try:
        url = proc.stdout.readline().strip()
        startup = time.perf_counter() - t
        if not url.startswith("http://127.0.0.1:"):
            raise SystemExit(f"explore did not start: {proc.stderr.read()}")
        base = url.split("/?", 1)[0]
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        opener.open(url).read()  # exchanges the token for the cookie
        n = args.entries
        rss = _rss_mib(proc.pid)
        print(f"ledger: {n:,} entries, {size / 2**20:,.0f} MiB SQLite; start-up {startup:.1f} s; server RSS {rss} MiB")
        print()
        print("| page | first fetch | median of 5 | bytes |")
        print("|---|---|---|---|")
        for name, path in pages(n):
            first, body = _fetch(opener, base + path)
            times = [_fetch(opener, base + path)[0] for _ in range(5)]
            print(f"| {name} | {first * 1000:.0f} ms | {statistics.median(times) * 1000:.0f} ms | {len(body):,} |")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _fetch(opener, url: str) -> tuple[float, bytes]:
    t = time.perf_counter()
    with opener.open(url) as response:
        body = response.read()
    return time.perf_counter() - t, body


def _rss_mib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return -1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
