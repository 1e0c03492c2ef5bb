"""Run artifacts written atomically: JSON documents and model checkpoints.

A file is written to a temporary name in the same directory, flushed, fsynced and renamed
over the target, so a crash leaves either the old file or the new one, never half of one.

A model checkpoint is safetensors bytes of the weights (sorted names, float32) with the
model's config as JSON metadata: deterministic, so the SHA-256 the ledger records for a
round's global model (``checkpoint_hash``) equals the hash of the file saved from it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load, save

from pharmafl.fileio import write_bytes_atomic  # noqa: F401 - re-exported
from pharmafl.models.dti import DTIModel

State = dict[str, np.ndarray]


def write_json(path: Path, obj) -> str:
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def checkpoint_bytes(state: State, config: dict) -> bytes:
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
    meta = {"format": "pharmafl-model/1", "config": config}
    # one metadata key: safetensors keeps metadata in a hash map whose order varies by process
    return save(tensors, metadata={"pharmafl": json.dumps(meta, sort_keys=True)})


def checkpoint_hash(state: State, config: dict) -> str:
    return hashlib.sha256(checkpoint_bytes(state, config)).hexdigest()


def server_state_bytes(arrays: State, data: dict) -> bytes:
    """The server's state between rounds (a strategy's moments or controls, the monitors'
    counters) as deterministic safetensors bytes: arrays keep their dtype, ``data`` is JSON."""
    tensors = {k: np.ascontiguousarray(v) for k, v in sorted(arrays.items())}
    meta = {"format": "pharmafl-server-state/1", "data": data}
    return save(tensors, metadata={"pharmafl": json.dumps(meta, sort_keys=True)})


def read_server_state(blob: bytes) -> tuple[State, dict]:
    """(arrays, data) of :func:`server_state_bytes`."""
    (n,) = np.frombuffer(blob[:8], dtype="<u8")
    meta = json.loads(json.loads(blob[8 : 8 + int(n)])["__metadata__"]["pharmafl"])
    return dict(load(blob)), meta["data"]


def model_state(model: torch.nn.Module) -> State:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def save_model(model: DTIModel, path: Path) -> str:
    """Save weights + config as safetensors; return the file's SHA-256."""
    return write_bytes_atomic(path, checkpoint_bytes(model_state(model), model.config_dict()))


def save_state(state: State, config: dict, path: Path) -> str:
    return write_bytes_atomic(path, checkpoint_bytes(state, config))


def load_model(path: Path) -> DTIModel:
    data = Path(path).read_bytes()
    (n,) = np.frombuffer(data[:8], dtype="<u8")
    meta = json.loads(json.loads(data[8 : 8 + int(n)])["__metadata__"]["pharmafl"])
    model = DTIModel(**meta["config"])
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in load(data).items()})
    return model
