"""Unix users on one machine for the multi-user deployment (tests/pipeline/multiuser.py).

Root creates and removes the users (``useradd`` / ``userdel --remove``, homes 0700, each in
its own group only), runs commands as them with ``setpriv`` (which changes uid and group
and execs in place, so no root parent stays behind and the process group is the user's),
samples ``/proc`` for who ran what, and stops whatever a user still runs (NVFlare starts
its job processes in sessions of their own, so a service's process group is not enough).

:class:`Runtime`: where the interpreter of ``.venv`` lives somewhere other users cannot
reach (a pyenv build under ``/root``, as on CI: ``/root`` is 0700), the users get the same
interpreter through a hard-linked copy of its install (no data copied, ``/root`` stays
closed) and a thin venv whose site-packages adds the project's ``.venv`` site-packages.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "pharmafl multiuser test user"  # the GECOS of every user created here: only those are ever removed


class UsersError(RuntimeError):
    """A user could not be created, run or removed; the message says which and why."""


def missing_tools() -> str | None:
    """Why this machine cannot host users of the harness (not root, a tool missing), or None."""
    if os.geteuid() != 0:
        return "needs root (useradd, setpriv, runuser): CI runs the tests as root"
    lacking = [t for t in ("useradd", "userdel", "runuser", "setpriv") if shutil.which(t) is None]
    return f"needs {', '.join(lacking)} (util-linux, passwd)" if lacking else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- users ------------------------------------------------------------------------------


def create_user(user: str, subdirs: tuple[str, ...] = ()) -> tuple[int, int, Path]:
    """A new user with home ``/home/USER`` (0700) and its own group; ``subdirs`` made in it (0700).
    A user of that name the harness left behind (its marker) is removed first."""
    try:
        known = pwd.getpwnam(user)
    except KeyError:
        known = None
    if known is not None:
        if known.pw_gecos != MARKER:
            raise UsersError(f"user {user} exists and was not created by this harness; remove or rename it")
        remove_user(user)
    home = Path("/home") / user
    if home.exists():
        raise UsersError(f"{home} exists without its user {user}; move it away (useradd would keep its owner)")
    subprocess.run(
        [
            "useradd",
            "--create-home",
            "--home-dir",
            str(home),
            "--shell",
            "/bin/bash",
            "--user-group",
            "--comment",
            MARKER,
            user,
        ],
        check=True,
        capture_output=True,
    )
    entry = pwd.getpwnam(user)
    home.chmod(0o700)
    for sub in subdirs:
        (home / sub).mkdir(mode=0o700)
        os.chown(home / sub, entry.pw_uid, entry.pw_gid)
    return entry.pw_uid, entry.pw_gid, home


def remove_user(user: str) -> None:
    """Stop the user's processes, then ``userdel --remove`` (the home with it). Only users of the harness."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return
    if entry.pw_gecos != MARKER:
        raise UsersError(f"refusing to remove {user}: not created by this harness")
    for _ in range(5):
        stop_processes_of(entry.pw_uid)
        done = subprocess.run(["userdel", "--remove", user], capture_output=True, text=True)
        if done.returncode in (0, 12):  # 12: the home was already gone
            return
        time.sleep(1)
    raise UsersError(f"userdel --remove {user} failed: {done.stderr.strip()}")


def as_user(uid: int, gid: int, env: dict[str, str], argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` as ``uid``/``gid`` with exactly ``env``."""
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--init-groups",
        "--",
        "env",
        "-i",
        *[f"{k}={v}" for k, v in env.items()],
        *argv,
    ]


def try_as(user: str, argv: list[str]) -> subprocess.CompletedProcess:
    """``runuser -u USER -- argv``: what that user's shell would get (for access checks)."""
    return subprocess.run(
        ["runuser", "-u", user, "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        cwd="/",
    )


# --- processes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """One process seen in ``/proc``: ``uid`` -1 if its real, effective and saved uids differ."""

    pid: int
    ppid: int
    uid: int
    user: str
    cmdline: str


def read_proc(pid: int) -> Proc | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uids = fields["Uid"].split()
    if len(set(uids)) != 1:
        return Proc(pid, int(fields["PPid"]), -1, "uids " + " ".join(uids), cmd)
    uid = int(uids[0])
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return Proc(pid, int(fields["PPid"]), uid, user, cmd)


def pids_of(uid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    out.append(int(entry))
    return out


class ProcessRecorder(threading.Thread):
    """Samples ``/proc`` every ``period`` s: every process of ``uids`` and every process whose
    command line names one of the paths ``names`` (whoever runs it); first sighting kept."""

    def __init__(self, uids: set[int], names: list[str], period: float = 0.5):
        super().__init__(daemon=True)
        self.uids, self.names, self.period = uids, names, period
        self.seen: dict[tuple[int, str], Proc] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.period)

    def sample(self) -> None:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                p = read_proc(int(entry))
                if p is not None and (p.uid in self.uids or any(n in p.cmdline for n in self.names)):
                    self.seen.setdefault((p.pid, p.cmdline), p)

    def stop(self) -> list[Proc]:
        if self.is_alive():
            self._halt.set()
            self.join(5)
            self.sample()
        return list(self.seen.values())


def stop_processes_of(uid: int, grace: float = 10.0) -> None:
    """SIGTERM every process group that ``uid``'s own processes lead, then SIGKILL what is left, by pid."""
    groups = set()
    for pid in pids_of(uid):
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    groups = {g for g in groups if g != os.getpgrp() and (p := read_proc(g)) is not None and p.uid == uid}
    for g in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids_of(uid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids_of(uid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids_of(uid) and time.monotonic() < deadline:
        time.sleep(0.1)


# --- the interpreter every user runs ------------------------------------------------------


def _reachable_by_others(path: Path) -> bool:
    """Whether a user who owns none of ``path``'s folders can reach and execute it."""
    path = Path(os.path.realpath(path))
    return all(p.stat().st_mode & stat.S_IXOTH for p in [*path.parents, path])


@dataclass
class Runtime:
    """``bin``: the folder with ``python3``, ``pharmafl`` and ``nvflare`` that every user's PATH
    starts with; ``env``: what that interpreter needs besides (the library path of a copy)."""

    bin: Path
    env: dict[str, str] = field(default_factory=dict)
    built: Path | None = None  # the folder made for the users, removed by close()

    @classmethod
    def for_users(cls, venv: Path) -> Runtime:
        venv = Path(venv)
        return cls(venv / "bin") if _reachable_by_others(venv / "bin" / "python") else cls._build(venv)

    @classmethod
    def _build(cls, venv: Path) -> Runtime:
        base = Path(
            subprocess.run(
                [str(venv / "bin" / "python"), "-c", "import sys; print(sys.base_prefix)"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        root = Path(tempfile.mkdtemp(prefix="pflt-runtime-"))
        root.chmod(0o755)
        try:
            _link_tree(
                base, root / "python", skip={base / "lib" / version / "site-packages", base / "lib" / version / "test"}
            )
            env = {"LD_LIBRARY_PATH": str(root / "python" / "lib")}  # its RUNPATH names the original
            subprocess.run(
                [str(root / "python" / "bin" / version), "-m", "venv", "--without-pip", str(root / "venv")],
                env={**env, "PATH": "/usr/bin:/bin"},
                check=True,
            )
            site_packages = venv / "lib" / version / "site-packages"
            (root / "venv" / "lib" / version / "site-packages" / "pflt-project-venv.pth").write_text(
                f"import site; site.addsitedir({str(site_packages)!r})\n"
            )  # its .pth files (the editable install) too
            shebangs = {f"#!{venv / 'bin' / n}".encode() for n in ("python", "python3", version)}
            for script in (venv / "bin").iterdir():  # the console scripts, on the users' interpreter
                head, _, rest = script.read_bytes().partition(b"\n") if script.is_file() else (b"", b"", b"")
                target = root / "venv" / "bin" / script.name
                if head in shebangs and not script.is_symlink() and not target.exists():
                    target.write_bytes(f"#!{root / 'venv' / 'bin' / 'python'}\n".encode() + rest)
                    target.chmod(0o755)
            return cls(root / "venv" / "bin", env, root)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    def close(self) -> None:
        if self.built is not None:
            shutil.rmtree(self.built, ignore_errors=True)  # unlinks; the original install is untouched
            self.built = None


def _link_tree(src: Path, dest: Path, *, skip: set[Path]) -> None:
    """``src`` re-created under ``dest``: new folders (0755), files hard-linked (copied across file systems)."""
    for folder, dirs, files in os.walk(src):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d not in skip]
        out = dest / here.relative_to(src)
        out.mkdir(mode=0o755, exist_ok=True)
        for name in files:
            s = here / name
            if s.is_symlink():
                os.symlink(os.readlink(s), out / name)
                continue
            try:
                os.link(s, out / name)
            except OSError:
                shutil.copy2(s, out / name)
