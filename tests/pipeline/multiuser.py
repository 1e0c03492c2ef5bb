"""A provisioned deployment on one machine in which every party is a Unix user of its own.

Issue 13's harness: docs/deployment.md step by step (``tests/pipeline/test_deployment.py``
runs it with 3 sites, ``bench/deployment.py`` with 10). Root plays the machine's operator and
the courier between organisations; every pharmafl and NVFlare command runs as its party's
user (:mod:`.unixusers`) with a clean environment: HOME, PATH with the pharmafl runtime
first, its private TMPDIR, its own secret and nothing else (no one needs ``PHARMAFL_DATA``:
each site's tables are in its home, and the run has no benchmark)::

    user            home (0700)           holds                                   runs
    pflt-coord      /home/pflt-coord      coord/ (consortium.json; NVFlare         NVFlare server (server kit),
                                          workspace: server and admin kits),       pharmafl run (admin kit),
                                          runs/, run.yaml                          ledger verify, export
    pflt-srvparty   /home/pflt-srvparty   party/ (server-party, role server)       pharmafl party serve
    pflt-helper     /home/pflt-helper     party/ (helper-1, the dealer), inbox/kit pharmafl party serve (+ dealer)
    pflt-site-NN    /home/pflt-site-NN    tables/ (its own compounds), site/,      NVFlare client (its kit)
                                          inbox/kit
    pflt-regulator  /home/pflt-regulator  inbox/ (bundle, roster)                  python -m pharmafl.audit.verify

The server's party belongs to the coordinator's organisation but runs under a user of its
own: the coordinator's processes never hold a party key (docs/trust-domains.md).

Everything that crosses between parties goes through :meth:`Deployment.hand_over`: root
copies it into the receiver's ``inbox/`` and chowns it to the receiver (docs/deployment.md,
"Exchanged out of band"): site and party cards to the coordinator; ``consortium.json`` to
every site and party; each site's startup kit to it (and the helper's to it, never
started: no job goes to a helper); each party's endpoint to the coordinator; the exported
ledger bundle to every site and the regulator, who takes the roster from a site.

Ports, all on 127.0.0.1: NVFlare's FL and admin ports are free ports picked before
provisioning; each party service listens on port 0 and reports its port in a ready file;
the parties' MPC workers and the dealer bind ephemeral ports themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .unixusers import (
    ProcessRecorder,
    Runtime,
    as_user,
    create_user,
    free_port,
    listening,
    remove_user,
    stop_processes_of,
    try_as,
)

PREFIX = "pflt-"
LOCK = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "pharmafl-multiuser.lock"
ADMIN = "admin@coordinator.org"
SERVER_HOST = "localhost"
SERVER_PARTY, HELPER = "server-party", "helper-1"


class DeploymentError(RuntimeError):
    """A step of the deployment failed; the message names the step, the user and the logs."""


def site_names(n: int) -> list[str]:
    return [f"site-{k:02d}" for k in range(1, n + 1)]


def davis_tables(shared: Path, out: Path, *, drugs: int, targets: int) -> Path:
    """The first ``drugs`` DAVIS compounds x ``targets`` targets (every 15th: at most 30), DeepDTA folds kept,
    as the CSV tables ``pharmafl site init`` reads (tests/conftest.py's ``small_davis``, sized)."""
    out.mkdir(parents=True, exist_ok=True)
    d = pd.read_csv(shared / "davis_deepdta_drugs.csv.gz").iloc[:drugs]
    t = pd.read_csv(shared / "davis_deepdta_targets.csv.gz").iloc[::15].iloc[:targets]
    if len(d) < drugs or len(t) < targets:
        raise DeploymentError(
            f"{shared}: DAVIS has {len(d)} compounds and {len(t)} targets (every 15th) for the "
            f"{drugs} x {targets} asked"
        )
    p = pd.read_csv(shared / "davis_deepdta_pairs.csv.gz")
    p = p[p.drug_id.isin(d.drug_id) & p.target_id.isin(t.target_id)].rename(columns={"deepdta_fold": "fold"})
    d[["drug_id", "smiles"]].to_csv(out / "drugs.csv", index=False)
    t[["target_id", "sequence"]].to_csv(out / "targets.csv", index=False)
    p[["drug_id", "target_id", "affinity", "fold"]].assign(unit="nM_Kd").to_csv(out / "measurements.csv", index=False)
    return out


def split_tables(tables: Path, n_sites: int, out: Path) -> dict[str, Path]:
    """Each site's own tables: a disjoint block of the compounds, their measurements, all targets."""
    drugs, targets = pd.read_csv(tables / "drugs.csv"), pd.read_csv(tables / "targets.csv")
    pairs = pd.read_csv(tables / "measurements.csv")
    per = len(drugs) // n_sites
    if per < 2:
        raise DeploymentError(f"{tables}: {len(drugs)} compounds cannot give each of {n_sites} sites two or more")
    found = {}
    for k, site in enumerate(site_names(n_sites)):
        mine = drugs.iloc[k * per : (k + 1) * per]
        found[site] = folder = out / site
        folder.mkdir(parents=True)
        mine.to_csv(folder / "drugs.csv", index=False)
        targets.to_csv(folder / "targets.csv", index=False)
        pairs[pairs.drug_id.isin(mine.drug_id)].to_csv(folder / "measurements.csv", index=False)
    return found


def each(fn: Callable, items: list) -> list:
    """``fn`` of every item, as many at once as the machine has cores: independent organisations."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


@dataclass
class Party:
    """One organisation's Unix user; ``name`` its pharmafl id (or its role)."""

    name: str
    role: str  # coordinator | server-party | helper | site | regulator
    user: str
    secrets: dict[str, str] = field(default_factory=dict)  # its own passphrases: in its environment only
    uid: int = -1
    gid: int = -1

    @property
    def home(self) -> Path:
        return Path("/home") / self.user


def _secret(name: str) -> dict[str, str]:
    return {name: secrets.token_hex(16)}


class Deployment:
    """N sites, the coordinator, two aggregation parties and a regulator as Unix users.

    A context manager: ``close()`` stops every process the users run and removes the users
    and their homes, whatever happened. Phases, each timed in ``seconds``: :meth:`set_up`,
    :meth:`provision`, :meth:`start`, :meth:`run`, :meth:`verify`.
    """

    def __init__(
        self,
        n_sites: int,
        tables: Path,
        *,
        rounds: int = 2,
        venv: Path | None = None,
        log: Callable[[str], None] = print,
    ):
        self.n_sites, self.tables, self.rounds, self.log = n_sites, Path(tables), rounds, log
        self.venv = Path(venv) if venv else Path(sys.executable).parent.parent
        self.sites = site_names(n_sites)
        self.coord = Party("coordinator", "coordinator", f"{PREFIX}coord", _secret("PHARMAFL_KEY_PASSPHRASE"))
        self.parties = {
            SERVER_PARTY: Party(
                SERVER_PARTY, "server-party", f"{PREFIX}srvparty", _secret("PHARMAFL_PARTY_PASSPHRASE")
            ),
            HELPER: Party(HELPER, "helper", f"{PREFIX}helper", _secret("PHARMAFL_PARTY_PASSPHRASE")),
        }
        self.site_parties = {
            s: Party(s, "site", f"{PREFIX}{s}", _secret("PHARMAFL_SITE_PASSPHRASE")) for s in self.sites
        }
        self.regulator = Party("regulator", "regulator", f"{PREFIX}regulator")
        self.everyone = [self.coord, *self.parties.values(), *self.site_parties.values(), self.regulator]
        self.seconds: dict[str, float] = {}
        self.handed: list[tuple[str, str, str]] = []  # (from user, to user, what) of every exchange
        self.services: dict[str, tuple[Party, subprocess.Popen, Path]] = {}  # name -> (party, process, log)
        self.kits: dict[str, Path] = {}
        self.endpoints: dict[str, str] = {}
        self.fl_port = self.admin_port = 0
        self.run_dir = self.coord.home / "runs" / "run1"
        self.runtime: Runtime | None = None
        self.recorder: ProcessRecorder | None = None
        self.processes: list = []  # unixusers.Proc of everything the users ran from start() to the run's end
        self._lock = None

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - t, 1)
            self.log(f"[deployment] {name}: {self.seconds[name]:.1f} s")

    # -- commands as a party ----------------------------------------------------------------

    def _env(self, party: Party) -> dict[str, str]:
        return {
            "HOME": str(party.home),
            "USER": party.user,
            "LOGNAME": party.user,
            "SHELL": "/bin/bash",
            "PATH": f"{self.runtime.bin}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "TMPDIR": str(party.home / "tmp"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            **self.runtime.env,
            **party.secrets,
        }

    def sh(self, party: Party, *argv: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """``argv`` as ``party`` in its home (a session of its own); raises with its output if it fails."""
        done = subprocess.run(
            as_user(party.uid, party.gid, self._env(party), list(argv)),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=party.home,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if check and done.returncode != 0:
            raise DeploymentError(
                f"as {party.user}: {' '.join(argv)} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def pharmafl(self, party: Party, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.sh(party, "pharmafl", *args, **kw)

    def hand_over(self, src: Path, sender: Party, receiver: Party, name: str | None = None) -> Path:
        """Out of band (root as the courier): ``src`` of the sender into the receiver's inbox, the receiver's."""
        dest = receiver.home / "inbox" / (name or src.name)
        if src.is_dir():
            shutil.copytree(src, dest, symlinks=True)
        else:
            shutil.copy2(src, dest)
        for path in [dest, *(dest.rglob("*") if dest.is_dir() else [])]:
            os.chown(path, receiver.uid, receiver.gid, follow_symlinks=False)
        self.handed.append((sender.user, receiver.user, dest.name))
        return dest

    # -- phases -----------------------------------------------------------------------------

    def set_up(self) -> None:
        """Users and homes; every site's own tables; every site and party sets itself up."""
        with self.phase("setup"):
            self._lock = open(LOCK, "a")  # noqa: SIM115 - held for the deployment's life
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DeploymentError(f"another deployment holds {LOCK}; run one at a time") from None
            self.runtime = Runtime.for_users(self.venv)
            for p in self.everyone:
                p.uid, p.gid, _ = create_user(p.user, ("tmp", "inbox", "logs"))
            staging = Path(tempfile.mkdtemp(prefix="pflt-tables-"))
            try:  # root writes each site's block into its home: the site's own data, never shared
                for site, folder in split_tables(self.tables, self.n_sites, staging).items():
                    p = self.site_parties[site]
                    shutil.copytree(folder, p.home / "tables")
                    for path in [p.home / "tables", *(p.home / "tables").iterdir()]:
                        os.chown(path, p.uid, p.gid)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

            def init(p: Party) -> None:
                if p.role == "site":
                    self.pharmafl(
                        p,
                        "site",
                        "init",
                        str(p.home / "tables"),
                        "--id",
                        p.name,
                        "--home",
                        str(p.home / "site"),
                    )
                else:
                    role = "server" if p.role == "server-party" else "helper"
                    self.pharmafl(p, "party", "init", "--id", p.name, "--home", str(p.home / "party"), "--role", role)

            each(init, [*self.site_parties.values(), *self.parties.values()])

    def provision(self) -> None:
        """Cards to the coordinator; the roster and NVFlare's kits; roster and kits out; everyone accepts."""
        c = self.coord
        with self.phase("provisioning"):
            flags = [  # the site cards, positional
                str(self.hand_over(p.home / "site" / "site-card.json", p, c, f"{s}.card.json"))
                for s, p in self.site_parties.items()
            ]
            flags += [
                a
                for n, p in self.parties.items()
                for a in (
                    "--party-card",
                    str(self.hand_over(p.home / "party" / "party-card.json", p, c, f"{n}.card.json")),
                )
            ]
            self.fl_port = free_port()
            while self.admin_port in (0, self.fl_port):
                self.admin_port = free_port()
            out = self.pharmafl(
                c,
                "consortium",
                "init",
                *flags,
                "--out",
                str(c.home / "coord"),
                "--nvflare-server",
                SERVER_HOST,
                "--admin",
                ADMIN,
                "--fl-port",
                str(self.fl_port),
                "--admin-port",
                str(self.admin_port),
            ).stdout
            self.kits = {m[1]: Path(m[2]) for m in re.finditer(r"^kit \S+ (\S+)\s+(\S+)$", out, re.M)}
            if set(self.kits) != {SERVER_HOST, ADMIN, *self.sites, HELPER}:
                raise DeploymentError(f"consortium init printed the kits {sorted(self.kits)}:\n{out}")
            for p in [*self.parties.values(), *self.site_parties.values()]:
                self.hand_over(c.home / "coord" / "consortium.json", c, p)
                if p.name in self.kits:  # the sites' kits, and the helper's (never started)
                    self.hand_over(self.kits[p.name], c, p, "kit")

            def join(p: Party) -> None:
                roster, kit = str(p.home / "inbox" / "consortium.json"), str(p.home / "inbox" / "kit")
                if p.role == "coordinator":
                    self.sh(c, "mkdir", "-p", str(c.home / "runs"))
                    self.pharmafl(
                        c,
                        "consortium",
                        "nvflare-config",
                        str(self.kits[SERVER_HOST]),
                        "--runs",
                        str(c.home / "runs"),
                    )
                elif p.role == "site":
                    self.pharmafl(p, "site", "accept", str(p.home / "site"), roster)
                    self.pharmafl(p, "site", "nvflare-config", str(p.home / "site"), "--kit", kit)
                else:
                    self.pharmafl(p, "party", "accept", str(p.home / "party"), roster)

            each(join, [c, *self.parties.values(), *self.site_parties.values()])

    def _spawn(self, name: str, party: Party, argv: list[str]) -> None:
        log = party.home / "logs" / f"{name}.log"
        with open(log, "ab") as fh:
            os.chown(log, party.uid, party.gid)
            proc = subprocess.Popen(
                as_user(party.uid, party.gid, self._env(party), argv),
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=party.home,
                start_new_session=True,
            )
        self.services[name] = (party, proc, log)

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float, names: list[str]) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [n for n in names if self.services[n][1].poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{dead} exited" if dead else f"not within {timeout:.0f} s"
                raise DeploymentError(f"waiting for {what}: {why}\n{self.tails(names)}")
            time.sleep(0.25)

    def start(self) -> None:
        """The party services, the NVFlare server and every site's client, each as its own user."""
        with self.phase("start"):
            self.recorder = ProcessRecorder({p.uid for p in self.everyone}, [f"{p.home}/" for p in self.everyone])
            self.recorder.start()
            for name, p in self.parties.items():
                self._spawn(
                    name,
                    p,
                    [
                        "pharmafl",
                        "party",
                        "serve",
                        str(p.home / "party"),
                        "--listen",
                        "127.0.0.1:0",
                        "--ready-file",
                        str(p.home / "party" / "serve.ready"),
                    ],
                )
            # sub_start.sh --once: start.sh's NVFlare process in the foreground, without its restart loop
            self._spawn(
                "server", self.coord, ["bash", str(self.kits[SERVER_HOST] / "startup" / "sub_start.sh"), "--once"]
            )
            for s, p in self.site_parties.items():
                self._spawn(s, p, ["bash", str(p.home / "inbox" / "kit" / "startup" / "sub_start.sh"), "--once"])
            ready = {n: p.home / "party" / "serve.ready" for n, p in self.parties.items()}
            self._wait("the party services", lambda: all(f.is_file() for f in ready.values()), 180, list(ready))
            for name, path in ready.items():  # each party tells the coordinator where it listens
                host, port = path.read_text().split()
                self.endpoints[name] = f"{host}:{port}"
                self.handed.append((self.parties[name].user, self.coord.user, f"endpoint {name}"))
            self._wait(
                "the NVFlare server", lambda: listening(self.fl_port) and listening(self.admin_port), 180, ["server"]
            )
            logs = [p.home / "inbox" / "kit" / "log.txt" for p in self.site_parties.values()]
            self._wait(
                "every site to register with the server",
                lambda: all(
                    f.is_file() and "Successfully registered client" in f.read_text(errors="replace") for f in logs
                ),
                300,
                self.sites,
            )

    def config(self) -> dict:
        """The coordinator's run: tiny model, DP-SGD at every site, secure aggregation at the two
        parties' endpoints, the ledger witnessed by the sites; no benchmark (the sites' data stays home)."""
        return {
            "name": "deployment",
            "seed": 3,
            "data": {"sites": self.n_sites, "benchmark": "none"},
            "model": {"max_len": 64, "embed_dim": 16, "kernel_size": 4, "latent_dim": 32},
            "train": {"batch_size": 64},
            "federation": {
                "rounds": self.rounds,
                "engine": "nvflare",
                "nvflare_env": "prod",
                "nvflare_admin_kit": str(self.kits[ADMIN]),
            },
            "ledger": {"enabled": True},
            "privacy": {"mode": "local", "epsilon": 8.0, "batch_size": 32},
            "secure_aggregation": {"enabled": True, "endpoints": dict(self.endpoints)},
        }

    def run(self, timeout: float = 900) -> dict:
        """``pharmafl run`` as the coordinator, through its admin kit; the run's ``metrics.json``."""
        import yaml

        c = self.coord
        with self.phase("run"):
            cfg = c.home / "run.yaml"
            cfg.write_text(yaml.safe_dump(self.config(), sort_keys=False))
            os.chown(cfg, c.uid, c.gid)
            done = self.pharmafl(
                c,
                "run",
                str(cfg),
                "--consortium",
                str(c.home / "coord" / "consortium.json"),
                "--out",
                str(self.run_dir),
                timeout=timeout,
                check=False,
            )
            (c.home / "logs" / "run.log").write_text(done.stdout + done.stderr)
            self.processes = self.recorder.stop()
            if done.returncode != 0 or not (self.run_dir / "metrics.json").is_file():
                raise DeploymentError(
                    f"pharmafl run exited {done.returncode}:\n{done.stdout[-4000:]}\n"
                    f"{done.stderr[-4000:]}\n{self.tails()}"
                )
            return json.loads((self.run_dir / "metrics.json").read_text())

    def verify(self) -> dict:
        """The coordinator verifies and exports its ledger; the regulator verifies the bundle
        offline against the roster a site gave it, every site required as a witness of every
        checkpoint; every site audits the bundle against its own home. Their output lines."""
        c, r, out = self.coord, self.regulator, {}
        with self.phase("verify"):
            out["coordinator"] = self.pharmafl(c, "ledger", "verify", str(self.run_dir)).stdout.strip()
            bundle = out["bundle"] = c.home / "export" / "run1"
            self.pharmafl(c, "ledger", "export", str(self.run_dir), "--out", str(bundle))
            first = self.site_parties[self.sites[0]]
            mine = self.hand_over(bundle, c, r, "bundle")
            roster = self.hand_over(first.home / "inbox" / "consortium.json", first, r)
            out["regulator"] = self.sh(
                r,
                "python3",
                "-m",
                "pharmafl.audit.verify",
                str(mine),
                "--roster",
                str(roster),
                "--witnesses",
                str(self.n_sites),
            ).stdout.strip()

            def audit(p: Party) -> str:
                mine = self.hand_over(bundle, c, p, "ledger-bundle")
                return self.pharmafl(p, "site", "audit", str(p.home / "site"), str(mine)).stdout.strip()

            out["audits"] = dict(zip(self.sites, each(audit, list(self.site_parties.values()))))
        return out

    # -- what the checks read -----------------------------------------------------------------

    def home_modes(self) -> dict[str, tuple[int, int, int]]:
        """user -> (mode, owner uid, the user's uid) of its home."""
        return {p.user: (stat.S_IMODE(p.home.stat().st_mode), p.home.stat().st_uid, p.uid) for p in self.everyone}

    def cross_reads(self) -> list[tuple[str, str, str, int, str]]:
        """As every user, list every home and read a file of it that exists (its own too, the
        control): (reader, owner, ls|read, exit code, stderr) of each attempt."""
        out = []
        for a in self.everyone:
            for b in self.everyone:
                for what, argv in (("ls", ["ls", str(b.home)]), ("read", ["cat", str(_a_file_of(b))])):
                    done = try_as(a.user, argv)
                    out.append((a.user, b.user, what, done.returncode, done.stderr.strip()))
        return out

    def temp_leftovers(self) -> list[str]:
        """What the users left in the machine's shared /tmp (each has its own ~/tmp)."""
        uids, found = {p.uid for p in self.everyone}, []
        for root, dirs, files in os.walk("/tmp"):
            for name in [*dirs, *files]:
                with contextlib.suppress(OSError):
                    st = (Path(root) / name).lstat()
                    if st.st_uid in uids:
                        found.append(f"{Path(root) / name} {stat.filemode(st.st_mode)} uid {st.st_uid}")
        return found

    @staticmethod
    def round_seconds(bundle: Path) -> dict[int, float]:
        """Wall seconds of every round, from the ledger's ``round_started`` / ``round_ended`` times."""
        from datetime import datetime

        def t(e: dict) -> float:
            return datetime.strptime(e["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()

        entries = [json.loads(line) for line in (bundle / "entries.jsonl").read_text().splitlines()]
        starts = {e["payload"]["round"]: t(e) for e in entries if e["type"] == "round_started"}
        return {
            r: round(t(e) - starts[r], 1)
            for e in entries
            if e["type"] == "round_ended" and (r := e["payload"]["round"]) in starts
        }

    def tails(self, names: list[str] | None = None, lines: int = 25) -> str:
        """The last lines of the services' logs (their console: NVFlare's log.txt as it prints it)."""
        out = []
        for name, (_, _, log) in self.services.items():
            if (names is None or name in names) and log.is_file():
                out.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every service (its process group) and whatever else the users run; remove the users."""
        try:
            if self.recorder is not None:
                self.processes = self.processes or self.recorder.stop()
            for _, proc, _ in self.services.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            for _, proc, _ in self.services.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.1, deadline - time.monotonic()))
            for p in self.everyone:
                if p.uid >= 0:
                    stop_processes_of(p.uid)  # NVFlare's job processes run in sessions of their own
            for _, proc, _ in self.services.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        finally:
            try:
                for p in self.everyone:
                    if p.uid >= 0:
                        remove_user(p.user)
            finally:
                if self.runtime is not None:
                    self.runtime.close()
                if self._lock is not None:
                    self._lock.close()
                    self._lock = None


def _a_file_of(party: Party) -> Path:
    """A file the party holds: its key material where it has some, else any file of its home."""
    for folder in ("site/keys", "party/keys", "coord/nvflare", "inbox", ""):
        files = (
            sorted(f for f in (party.home / folder).rglob("*") if f.is_file()) if (party.home / folder).is_dir() else []
        )
        if files:
            return files[0]
    raise DeploymentError(f"{party.home} holds no file")
