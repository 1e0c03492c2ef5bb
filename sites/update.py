"""A site's update as bytes: what is sent, hashed and recorded is exactly these bytes.

Format: safetensors (a JSON header of sorted names, dtypes, shapes and offsets, then raw
little-endian data; no pickle, deterministic for equal content) holding float32 arrays
named ``<part>/<parameter>`` — ``delta/...`` (local weights minus the global weights the
site received) and, for SCAFFOLD, ``control/...`` — plus one metadata entry (JSON): format
version, site id, round and example count.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from pharmafl.errors import RefusedError

FORMAT = "pharmafl-update/1"


class UpdateError(RefusedError):
    """An update's bytes are malformed or do not match what they claim."""


@dataclass(frozen=True)
class Update:
    site: str
    round: int
    num_examples: int
    parts: dict[str, dict[str, np.ndarray]]  # part -> parameter -> array

    @property
    def delta(self) -> dict[str, np.ndarray]:
        return self.parts["delta"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode(update: Update) -> bytes:
    tensors = {
        f"{part}/{name}": np.ascontiguousarray(arr, dtype=np.float32)
        for part, arrays in update.parts.items()
        for name, arr in arrays.items()
    }
    meta = {"format": FORMAT, "site": update.site, "round": update.round, "num_examples": update.num_examples}
    # one metadata key: safetensors keeps metadata in a hash map whose order varies by process
    return save(tensors, metadata={"pharmafl": json.dumps(meta, sort_keys=True)})


def decode(data: bytes) -> Update:
    """Parse update bytes; any malformation is one :class:`UpdateError` (never another exception:
    the bytes are whatever a site sent)."""
    try:
        tensors = load(data)
        meta = _metadata(data)
    except (SafetensorError, ValueError, KeyError, TypeError, AttributeError, RecursionError, struct.error) as exc:
        raise UpdateError(f"update bytes are not a valid {FORMAT} payload: {type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UpdateError(
            f"update format {meta.get('format') if isinstance(meta, dict) else meta!r:.80}, expected {FORMAT!r}"
        )
    site, round_, examples = meta.get("site"), meta.get("round"), meta.get("num_examples")
    if type(site) is not str or type(round_) is not int or type(examples) is not int:
        raise UpdateError(
            f"update metadata site {site!r:.80} / round {round_!r:.40} / num_examples {examples!r:.40}: "
            f"expected a string and two integers"
        )
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in tensors.items():
        if arr.dtype != np.float32:
            raise UpdateError(f"update array {key!r:.80} is {arr.dtype}, expected float32")
        part, _, name = key.partition("/")
        parts.setdefault(part, {})[name] = arr
    if "delta" not in parts:
        raise UpdateError("update holds no delta/ arrays")
    return Update(site, round_, examples, parts)


def _metadata(data: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    return json.loads((header.get("__metadata__") or {}).get("pharmafl", "{}"))
