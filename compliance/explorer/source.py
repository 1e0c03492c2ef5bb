"""What the explorer opens: a run directory, a PostgreSQL ledger URL, a ledger bundle or an
evidence package, verified first and copied into a :class:`~.index.LedgerIndex`.

Steps (each a line of :func:`open_ledger`)::

    resolve PATH            run directory (ledger.db or config.yaml's ledger.url) | postgresql:// URL |
                            ledger bundle (manifest.json) | evidence package (MANIFEST.json)
    verify and copy         the standalone verifier's checks (the package verifier's for a package),
                            over the same rows that go into the index, in one pass
    the verdict             OK with entries, checkpoints and witness quorum; or the first bad seq and why

A ledger that does not verify is still opened, so that a reviewer can look at what is wrong:
every page then carries the red banner naming the first bad entry. An input that cannot be read
at all is one :class:`~pharmafl.compliance.errors.ComplianceError` (exit 2).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pharmafl.audit.messages import canonical
from pharmafl.audit.verify import VerificationError, verify
from pharmafl.audit.verify_bundle import counted, load_anchors
from pharmafl.compliance.errors import ComplianceError
from pharmafl.compliance.explorer.index import LedgerIndex

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Verdict:
    """The verification result every page shows as its banner."""

    ok: bool
    line: str  # "OK: N entries, ..." or "FAIL: seq N: why"
    seq: int | None = None  # the first bad entry
    reason: str | None = None
    verified: int = 0  # entries up to the first bad one (all when ok)
    details: dict = field(default_factory=dict)  # Result.as_dict() / PackageResult.as_dict()

    @classmethod
    def failed(cls, err: VerificationError, where: str = "") -> Verdict:
        text = f"FAIL: {where}{err}"
        return cls(False, text, err.seq, err.reason, err.seq if err.seq is not None else 0)


@dataclass
class Opened:
    """A verified (or failed) ledger, indexed; ``kind`` says what PATH was."""

    path: str
    kind: str  # "run directory" | "PostgreSQL ledger" | "ledger bundle" | "evidence package"
    verdict: Verdict
    index: LedgerIndex
    workdir: Path
    run_dir: Path | None = None  # a run directory: its model.safetensors is compared with the ledger
    package: Path | None = None  # an evidence package: its reports and signatures.json

    def close(self) -> None:
        import shutil

        self.index.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _kind(path: str) -> str:
    if path.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        return "PostgreSQL ledger"
    p = Path(path)
    if (p / "MANIFEST.json").is_file():
        return "evidence package"
    if (p / "manifest.json").is_file():
        return "ledger bundle"
    if p.is_dir():
        return "run directory"
    raise ComplianceError(
        f"{path}: not a run directory, an evidence package (MANIFEST.json), a ledger bundle (manifest.json) "
        "or a postgresql:// URL; pass the folder `pharmafl run` or `pharmafl evidence export` wrote"
    )


def _bundle_rows(bundle: Path) -> Iterator[tuple]:
    with open(bundle / "entries.jsonl", "rb") as lines:
        for line in lines:
            e = json.loads(line)
            yield (
                e["seq"],
                e["ts"],
                e["actor"],
                e["type"],
                canonical(e["payload"]),
                e["prev_hash"],
                e["entry_hash"],
                e["signature"],
            )


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def open_ledger(
    path: str | os.PathLike,
    *,
    trusted_head: str | None = None,
    roster: str | None = None,
    witnesses: int | None = None,
    jobs: int | None = None,
    on_progress: Progress | None = None,
) -> Opened:
    """Verify and index the ledger at ``path``; the caller closes the result (its index is a temp file)."""
    path = os.fspath(path)
    kind = _kind(path)
    workdir = Path(tempfile.mkdtemp(prefix="pharmafl-explore-"))
    index = LedgerIndex.create(workdir)
    try:
        if kind in ("evidence package", "ledger bundle"):
            verdict, bundle = _verify_files(path, kind, trusted_head, roster, witnesses, jobs, on_progress)
            index.drain(index.recording(_bundle_rows(bundle)))
            index.finish(_jsonl(bundle / "checkpoints.jsonl"), _jsonl(bundle / "cosignatures.jsonl"))
            package = Path(path) if kind == "evidence package" else None
            return Opened(path, kind, verdict, index, workdir, package=package)
        verdict = _verify_database(path, kind, index, trusted_head, roster, witnesses, jobs, on_progress)
        return Opened(path, kind, verdict, index, workdir, run_dir=Path(path) if kind == "run directory" else None)
    except (VerificationError, ComplianceError, OSError, ValueError, KeyError) as err:
        index.close()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
        if isinstance(err, ComplianceError):
            raise
        reason = err.reason if isinstance(err, VerificationError) else f"{type(err).__name__}: {err}"
        raise ComplianceError(f"cannot explore {path}: {reason}") from None


def _verify_files(path, kind, trusted_head, roster, witnesses, jobs, on_progress) -> tuple[Verdict, Path]:
    from pharmafl.audit.evidence import verify_package
    from pharmafl.audit.verify import verify_path

    root = Path(path)
    bundle = root / "ledger" if kind == "evidence package" else root
    if not (bundle / "entries.jsonl").is_file():
        raise ComplianceError(f"{path}: {bundle / 'entries.jsonl'} is missing; export the package again")
    try:
        if kind == "evidence package":
            result = verify_package(path, trusted_head=trusted_head, jobs=jobs, on_progress=on_progress)
            details = result.as_dict()
            ledger = result.ledger
        else:
            ledger = verify_path(
                path, trusted_head=trusted_head, roster=roster, witnesses=witnesses, jobs=jobs, on_progress=on_progress
            )
            details = ledger.as_dict()
        return Verdict(
            True,
            result.line() if kind == "evidence package" else ledger.line(),
            verified=ledger.entries,
            details=details,
        ), bundle
    except VerificationError as err:
        if err.unreadable:
            raise ComplianceError(f"cannot explore {path}: {err.reason}") from None
        return Verdict.failed(err), bundle


def _verify_database(path, kind, index, trusted_head, roster, witnesses, jobs, on_progress) -> Verdict:
    from pharmafl.audit.dbsource import snapshot
    from pharmafl.compliance.access import ledger_target

    target = ledger_target(path) if kind == "run directory" else path
    if not target.startswith("postgres") and not Path(target).is_file():
        raise ComplianceError(f"{path}: no ledger.db (and no ledger.url in config.yaml); pass a run directory")
    anchors = load_anchors(trusted_head, None, roster)
    with snapshot(target) as (rows, checkpoints, cosignatures, size):
        copied = index.recording(rows if on_progress is None else counted(rows, on_progress, size))
        try:
            result = verify(copied, checkpoints, cosignatures, **anchors, witnesses=witnesses, jobs=jobs).result()
            verdict = Verdict(True, result.line(), verified=result.entries, details=result.as_dict())
        except VerificationError as err:
            if err.unreadable:
                raise
            verdict = Verdict.failed(err)
        index.drain(copied)
        index.finish(checkpoints, cosignatures)
    return verdict
