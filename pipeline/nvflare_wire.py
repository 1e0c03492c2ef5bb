"""What travels through NVFlare between the coordinator and a site, and how it is packed.

Server -> site: the global weights as ``FLModel.params`` (float32 arrays) and the round's
:class:`~pharmafl.sites.site.Instructions` in ``FLModel.meta`` (``None`` = evaluate the final
model only).

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


def encode_instructions(instructions: Instructions | None) -> dict:
    if instructions is None:
        return {"pharmafl_instructions": None}
    return {
        "pharmafl_instructions": {
            "proximal_mu": float(instructions.proximal_mu),
            "scaffold_control": instructions.scaffold_control,
            "accepted": list(instructions.accepted) if instructions.accepted is not None else None,
        }
    }


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
    """The site's :class:`FitResult` or :class:`Declined`, or why there is neither."""
    meta = model.meta or {}
    if "error" in meta:
        return f"local training failed: {meta['error']}"
    if "declined" in meta and int(meta.get("round", -1)) == round:
        d = meta["declined"]
        return Declined(site, round, str(d["reason"]), dict(d["details"]), tuple(meta.get("statements") or ()))
    payload = (model.params or {}).get(UPDATE_KEY)
    if payload is None or "update_hash" not in meta:
        return f"result without an update (keys {sorted(model.params or {})})"
    if int(meta.get("round", -1)) != round:
        return f"result for round {meta.get('round')} arrived in round {round}"
    return FitResult(
        site,
        round,
        np.asarray(payload, dtype=np.uint8).tobytes(),
        str(meta["update_hash"]),
        int(meta["num_examples"]),
        dict(meta.get("site_metrics", {})),
        meta.get("privacy"),
        tuple(meta.get("statements") or ()),
    )


def model_witness_only() -> FLModel:
    return FLModel(params_type=ParamsType.FULL, params={"__pharmafl_witness__": np.zeros(1, np.uint8)}, meta={})


def witness_answer(model: FLModel | None):
    """A site's answer to the last witness request: a cosignature (dict), why not (str), or None."""
    answer = (model.meta or {}).get(WITNESS_KEY) if model is not None else None
    if isinstance(answer, dict) and set(answer) == {"refused"}:
        return str(answer["refused"])
    return answer


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
