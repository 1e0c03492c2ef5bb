"""What travels through NVFlare between the coordinator and a site, and how it is packed.

Server -> site: the global weights as ``FLModel.params`` (float32 arrays) and, in
``FLModel.meta``, the round's number (``pharmafl_round``: pharmafl's, not NVFlare's, which a
resumed run does not share) and its :class:`~pharmafl.sites.site.Instructions` (``None`` =
evaluate the final model only). The initial model carries round 1's like any other.

Site -> server: the update's bytes, exactly as hashed, as one ``uint8`` array in ``params``
(key ``UPDATE_KEY``), and in ``meta`` the claimed hash, the example count and scalar metrics;
or ``meta["declined"]`` (reason and numbers; e.g. a spent privacy budget), or, when local
training raised, ``meta["error"]`` (the site stays in the federation). A result or decline
carries the site's signed statements in ``meta["statements"]``.

Witnessing rides on the same messages: after each checkpoint the server's next model
carries ``meta[WITNESS_KEY]`` = {site: request} (the checkpoint and a consistency proof
for that site's witness); each site answers in its next result's ``meta[WITNESS_KEY]``
(its ``cosignature/v1`` or ``{"refused": why}``). After ``run_ended`` one more message,
``meta[WITNESS_ONLY]``, asks only for the cosignatures of the last checkpoint.
"""

from __future__ import annotations

import numpy as np
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from pharmafl.sites.site import Declined, FitResult, Instructions

UPDATE_KEY = "__pharmafl_update__"
STOP_METRIC = "pharmafl_stop"  # FedAvg stop condition: "pharmafl_stop >= 1"
WITNESS_KEY = "pharmafl_witness"
WITNESS_ONLY = "pharmafl_witness_only"


ROUND_KEY = "pharmafl_round"


def encode_task(task) -> dict:
    """A :class:`~pharmafl.pipeline.rounds.RoundTask`'s round number and instructions for a global
    model's meta; ``None``: evaluate the final model only."""
    if task is None:
        return encode_instructions(None)
    return {**encode_instructions(task.instructions), ROUND_KEY: task.round}


def encode_instructions(instructions: Instructions | None) -> dict:
    if instructions is None:
        return {"pharmafl_instructions": None}
    return {
        "pharmafl_instructions": {
            "proximal_mu": float(instructions.proximal_mu),
            "scaffold_control": instructions.scaffold_control,
            "accepted": list(instructions.accepted) if instructions.accepted is not None else None,
            "step": int(instructions.step),
        }
    }


def decode_task(meta: dict) -> tuple[int, Instructions | None]:
    """(round number, instructions) from a global model's meta; instructions ``None`` = evaluate
    only (round 0). Raises ValueError naming what is missing or malformed (a broken server)."""
    if not isinstance(meta, dict) or "pharmafl_instructions" not in meta:
        raise ValueError("the global model carries no pharmafl_instructions: the server is not pharmafl's")
    instructions = decode_instructions(meta)
    if instructions is None:
        return 0, None
    r = meta.get(ROUND_KEY)
    if type(r) is not int or r < 1:
        raise ValueError(f"the global model's {ROUND_KEY} is {r!r}, not a round number")
    return r, instructions


def decode_instructions(meta: dict) -> Instructions | None:
    """Instructions from a global model's meta; ``None`` = evaluate only; KeyError if absent."""
    d = meta["pharmafl_instructions"]
    if d is None:
        return None
    control, accepted = d["scaffold_control"], d["accepted"]
    return Instructions(
        proximal_mu=float(d["proximal_mu"]),
        scaffold_control={k: np.asarray(v) for k, v in control.items()} if control is not None else None,
        accepted=tuple(accepted) if accepted is not None else None,
        step=int(d.get("step", 0)),
    )


def model_from_result(result: FitResult) -> FLModel:
    return FLModel(
        params_type=ParamsType.FULL,
        metrics={STOP_METRIC: 0.0},  # the key NVFlare's model selector looks for
        params={UPDATE_KEY: np.frombuffer(result.payload, dtype=np.uint8).copy()},
        meta={
            "update_hash": result.update_hash,
            "num_examples": result.num_examples,
            "round": result.round,
            "site_metrics": dict(result.metrics),
            "privacy": result.privacy,
            "statements": list(result.statements),
        },
    )


def model_from_declined(declined: Declined) -> FLModel:
    return FLModel(
        params_type=ParamsType.FULL,
        params={"__pharmafl_declined__": np.zeros(1, np.uint8)},
        meta={
            "round": declined.round,
            "declined": {"reason": declined.reason, "details": dict(declined.details)},
            "statements": list(declined.statements),
        },
    )


def model_from_error(round: int, error: str) -> FLModel:
    return FLModel(
        params_type=ParamsType.FULL,
        params={"__pharmafl_error__": np.zeros(1, np.uint8)},
        meta={"round": round, "error": error},
    )


def model_from_final_metrics(metrics: dict) -> FLModel:
    return FLModel(
        params_type=ParamsType.FULL,
        params={"__pharmafl_final__": np.zeros(1, np.uint8)},
        meta={"final_metrics": metrics},
    )


def result_from_model(site: str, round: int, model: FLModel) -> FitResult | Declined | str:
    """The site's :class:`FitResult` or :class:`Declined`, or why there is neither.

    A site sends what it likes: every field is checked for its type and form here (what it
    says is the coordinator's to check), and a malformed message is returned as that site's
    failure for the round, never raised into the server."""
    try:
        return _result(site, round, model)
    except Exception as exc:  # noqa: BLE001 - a malformation the checks below missed is still only the site's
        return f"result malformed: {type(exc).__name__}: {exc!s:.200}"


_HEX_DIGITS = frozenset("0123456789abcdef")
MAX_ERROR_TEXT = 2000  # characters of a site's error or refusal kept for the ledger


def _result(site: str, round: int, model) -> FitResult | Declined | str:
    if not isinstance(model, FLModel):
        return f"result is a {type(model).__name__}, not an FLModel"
    meta = {} if model.meta is None else model.meta
    if not isinstance(meta, dict):
        return f"result meta is a {type(meta).__name__}, not a mapping"
    if "error" in meta:
        return f"local training failed: {_text(meta['error'])}"
    r = meta.get("round")
    if not _integer(r):
        return f"result's round {r!r:.40} is not an integer"
    if "declined" in meta:
        return _declined(site, round, int(r), meta)
    params = {} if model.params is None else model.params
    if not isinstance(params, dict):
        return f"result params are a {type(params).__name__}, not a mapping"
    payload = params.get(UPDATE_KEY)
    if payload is None or "update_hash" not in meta:
        return f"result without an update (keys {sorted(map(str, params))[:8]!r:.300})"
    if r != round:
        return f"result for round {r} arrived in round {round}"
    h, n = meta["update_hash"], meta.get("num_examples")
    metrics, privacy = meta.get("site_metrics", {}), meta.get("privacy")
    if not (type(h) is str and len(h) == 64 and set(h) <= _HEX_DIGITS):
        return f"result's update_hash {h!r:.80} is not 64 lowercase hex digits"
    if not _integer(n) or n < 1:
        return f"result's num_examples {n!r:.40} is not an integer >= 1"
    if not isinstance(metrics, dict):
        return f"result's site_metrics is a {type(metrics).__name__}, not a mapping"
    if privacy is not None and not isinstance(privacy, dict):
        return f"result's privacy report is a {type(privacy).__name__}, not a mapping or None"
    statements, data = _statements(meta), _update_bytes(payload)
    for problem in (statements, data):
        if isinstance(problem, str):
            return problem
    return FitResult(site, round, data, h, int(n), dict(metrics), privacy, statements)


def _declined(site: str, round: int, r: int, meta: dict) -> Declined | str:
    if r != round:
        return f"decline for round {r} arrived in round {round}"
    d = meta["declined"]
    if not isinstance(d, dict) or type(d.get("reason")) is not str or not isinstance(d.get("details"), dict):
        return "decline malformed: expected {reason: text, details: mapping}"
    statements = _statements(meta)
    if isinstance(statements, str):
        return statements
    return Declined(site, round, d["reason"], dict(d["details"]), statements)


def _integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _text(v) -> str:
    """A site's free text (an error, a refusal), as text and bounded."""
    s = v if isinstance(v, str) else repr(v)
    return s if len(s) <= MAX_ERROR_TEXT else s[:MAX_ERROR_TEXT] + f"… ({len(s)} characters)"


def _statements(meta: dict) -> tuple[dict, ...] | str:
    """The result's signed statements as a tuple of mappings, each naming its type (the
    coordinator checks what they say and who signed them)."""
    stmts = meta.get("statements")
    if stmts is None:
        return ()
    if not isinstance(stmts, (list, tuple)) or not all(
        isinstance(s, dict) and type(s.get("type")) is str for s in stmts
    ):
        return f"result's statements are malformed: expected a list of signed statements, got {stmts!r:.120}"
    return tuple(stmts)


def _update_bytes(payload) -> bytes | str:
    """The update's bytes from ``params[UPDATE_KEY]``: a 1-D array of byte values."""
    try:
        arr = np.asarray(payload)
    except (ValueError, TypeError) as exc:  # ragged lists, objects numpy cannot hold
        return f"update is not an array of bytes: {type(exc).__name__}: {exc!s:.120}"
    if arr.ndim != 1 or arr.dtype.kind not in "ui":
        return f"update is a {arr.dtype} array of shape {arr.shape}, expected a 1-D uint8 array"
    if arr.dtype != np.uint8 and arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
        return "update array holds values outside 0..255: not bytes"
    return arr.astype(np.uint8).tobytes()


def model_witness_only() -> FLModel:
    return FLModel(params_type=ParamsType.FULL, params={"__pharmafl_witness__": np.zeros(1, np.uint8)}, meta={})


def witness_answer(model: FLModel | None):
    """A site's answer to the last witness request: a cosignature (dict), why not (str), or None
    (no answer); a malformed answer is returned as why not, never raised."""
    if model is None:
        return None
    meta = getattr(model, "meta", None)
    if not isinstance(meta, dict):
        return None if meta is None else f"witness answer malformed: the result's meta is a {type(meta).__name__}"
    answer = meta.get(WITNESS_KEY)
    if isinstance(answer, dict) and set(answer) == {"refused"}:
        return _text(answer["refused"])
    if isinstance(answer, str):
        return _text(answer)
    if answer is None or isinstance(answer, dict):
        return answer
    return f"witness answer malformed: a {type(answer).__name__}, not a cosignature or a reason"


def witness_reply(site, request: dict | None):
    """The site's witness answer to ``request`` for the wire (None: nothing was asked)."""
    if request is None:
        return None
    try:
        return site.witness(request)
    except Exception as exc:  # a refusal travels back and is recorded; the site goes on
        return {"refused": f"{type(exc).__name__}: {exc}"}


def with_witness(model: FLModel, answer) -> FLModel:
    if answer is not None:
        model.meta = {**(model.meta or {}), WITNESS_KEY: answer}
    return model
