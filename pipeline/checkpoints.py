"""The coordinator's checkpoint after every completed round: what ``pharmafl resume`` starts from.

``RUN/checkpoints/round-NNNNNN/`` holds

* ``model.safetensors``: the global model after the round, the bytes whose SHA-256 the
  round's ``aggregated`` entry records as ``checkpoint_hash``;
* ``server.safetensors``: the server's state after the round (the strategy's moments or
  control variates, the client-level DP accountant, the drift monitor), whose SHA-256 the
  round's ``round_ended`` entry records as ``server_state_hash``;
* ``checkpoint.json``: the round and step, both hashes, the run id and the ledger head the
  checkpoint belongs to (the signed tree head written after ``round_ended``).

The three files are written into a hidden ``.round-NNNNNN.partial-*`` folder, fsynced, and the
folder renamed into place: a checkpoint is there whole or not at all, and a crash while writing
leaves the previous one as the latest. Every round's checkpoint is kept (the ledger names each
intermediate model by hash; a reviewer can fetch it). The coordinator is not trusted with them:
``resume`` checks a checkpoint's hashes against the verified ledger before using it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from pharmafl.errors import ConfigError
from pharmafl.fileio import fsync_dir, write_bytes_atomic
from pharmafl.pipeline.aggregate import State
from pharmafl.pipeline.artifacts import checkpoint_bytes

FORMAT = "pharmafl-checkpoint/1"
_NAME = re.compile(r"round-(\d{6,})")


@dataclass(frozen=True)
class Checkpoint:
    """One round's checkpoint as ``checkpoint.json`` describes it."""

    path: Path
    round: int
    step: int
    model_sha256: str
    server_sha256: str
    ledger: dict | None  # {tree_size, root_hash}: the signed head after the round's round_ended
    run_id: str

    def read(self) -> tuple[bytes, bytes]:
        """(model bytes, server-state bytes), each checked against the hash this checkpoint names."""
        model, server = (self.path / "model.safetensors").read_bytes(), (self.path / "server.safetensors").read_bytes()
        for name, blob, want in (("model", model, self.model_sha256), ("server state", server, self.server_sha256)):
            if hashlib.sha256(blob).hexdigest() != want:
                raise ConfigError(
                    f"{self.path}: the {name} file does not hash to what its checkpoint.json says; the checkpoint "
                    "was altered or damaged (resume from an earlier one by moving this folder away)"
                )
        return model, server


class CheckpointStore:
    """The checkpoints of the run in ``run_dir``."""

    def __init__(self, run_dir: Path):
        self.root = Path(run_dir) / "checkpoints"

    def save(
        self,
        *,
        round: int,
        step: int,
        state: State,
        model_config: dict,
        server_state: bytes,
        ledger: dict | None,
        run_id: str,
    ) -> Checkpoint:
        """Write round ``round``'s checkpoint whole (or raise, leaving none for it)."""
        final = self.root / f"round-{round:06d}"
        if final.exists():
            raise ConfigError(
                f"{final} exists: round {round} was checkpointed before, and round numbers are not reused"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        stage = self.root / f".{final.name}.partial-{secrets.token_hex(4)}"
        stage.mkdir()
        try:
            model_sha = write_bytes_atomic(stage / "model.safetensors", checkpoint_bytes(state, model_config))
            server_sha = write_bytes_atomic(stage / "server.safetensors", server_state)
            doc = {
                "format": FORMAT,
                "run_id": run_id,
                "round": round,
                "step": step,
                "model_sha256": model_sha,
                "server_sha256": server_sha,
                "ledger": ledger,
            }
            write_bytes_atomic(stage / "checkpoint.json", (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
            fsync_dir(stage)
            os.replace(stage, final)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return self._open(final)

    def _open(self, path: Path) -> Checkpoint:
        try:
            doc = json.loads((path / "checkpoint.json").read_text())
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT!r}")
            return Checkpoint(
                path,
                int(doc["round"]),
                int(doc["step"]),
                str(doc["model_sha256"]),
                str(doc["server_sha256"]),
                doc.get("ledger"),
                str(doc["run_id"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path / 'checkpoint.json'} is unreadable ({exc}); move the folder away to resume from "
                "the checkpoint before it"
            ) from None

    def all(self) -> list[Checkpoint]:
        """Every complete checkpoint, by round (partial folders of a crashed write are not checkpoints)."""
        if not self.root.is_dir():
            return []
        found = sorted((int(m.group(1)), p) for p in self.root.iterdir() if (m := _NAME.fullmatch(p.name)))
        return [self._open(p) for _, p in found]

    def discard_partial(self) -> list[Path]:
        """Remove what a crash left of a checkpoint being written; returns what was removed."""
        gone = [p for p in self.root.glob(".round-*.partial-*")] if self.root.is_dir() else []
        for p in gone:
            shutil.rmtree(p, ignore_errors=True)
        return gone
