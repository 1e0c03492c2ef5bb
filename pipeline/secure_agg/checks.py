"""What an aggregation party checks before it takes part: the run's terms and each envelope.

Pure functions of the request, the consortium the party accepted and its own key; each
problem is one :class:`~pharmafl.pipeline.secure_agg.party_home.PartyRefusal` (a run or a
round refused) or one reason string (a site left out), which the party signs and the
ledger records. Nothing the coordinator says is taken on trust:

* **terms** (``register``): the roster must be one the party accepted; the parties, their
  order and the dealer follow from it; ``min_sites`` is at least :data:`MIN_SITES`; the cap on
  example counts leaves the weighted sum inside the ring
  (:math:`\\text{cap} \\cdot n_{\\text{sites}} \\cdot 2^{16} T < 2^{62}`).
* **an envelope** (``round``): the site's ``secure_shares`` statement is signed by the key of
  its card in that roster, for this run and round; it names the exact header bytes the
  party received (``header_sha256``), and the header names this run, round and site, the
  run's parameter layout, this party's key and the ciphertext's hash; the example count
  (the site's weight) is the signed one and at most the cap; the share opens
  (HPKE) to the piece the header commits to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pharmafl.audit.messages import is_hex
from pharmafl.pipeline.secure_agg.config import MAX_LIMIT, fits_ring
from pharmafl.pipeline.secure_agg.party_home import PartyRefusal
from pharmafl.pipeline.statements import statement_problem
from pharmafl.sites.party_card import ranked
from pharmafl.sites.secret_sharing import PRECISION_BITS, Envelope, PartyKey, ShareError, open_share, parse_header

MIN_SITES = 2  # a party never reveals a sum of fewer sites: one site's sum is its update
TERMS_FIELDS = (
    "buckets",
    "context",
    "dealer",
    "layout",
    "max_examples",
    "max_update_norm",
    "min_sites",
    "parties",
    "roster_sha256",
    "run_id",
    "sketches",
    "slack",
    "weighting",
)


def check_terms(terms, consortium: Mapping, party: str) -> dict:
    """``terms`` if this party may serve them under ``consortium`` (one it accepted)."""
    if type(terms) is not dict or tuple(sorted(terms)) != TERMS_FIELDS:
        got = sorted(terms) if type(terms) is dict else type(terms).__name__
        raise PartyRefusal(f"run terms must have exactly the fields {list(TERMS_FIELDS)}, got {got}")
    parties = consortium["parties"]
    if terms["parties"] != ranked(parties):
        raise PartyRefusal(
            f"the run names parties {terms['parties']!r}; the accepted roster's, in rank order, are {ranked(parties)}"
        )
    if party not in parties:
        raise PartyRefusal(f"{party} is not a party of roster {terms['roster_sha256'][:16]}...")
    if terms["dealer"] not in parties or parties[terms["dealer"]]["role"] == "server":
        raise PartyRefusal(f"the dealer {terms['dealer']!r} must be a helper party of the roster, not the server's")
    ints = ("min_sites", "max_examples", "sketches", "buckets")
    if not all(type(terms[k]) is int and terms[k] >= 1 for k in ints) or terms["weighting"] not in (
        "examples",
        "uniform",
    ):
        raise PartyRefusal(f"run terms: {list(ints)} must be positive integers and weighting 'examples' or 'uniform'")
    if terms["min_sites"] < MIN_SITES:
        raise PartyRefusal(
            f"min_sites {terms['min_sites']} is below {MIN_SITES}: a sum over one site reveals that "
            f"site's update; this party never reveals one"
        )
    bound, slack = terms["max_update_norm"], terms["slack"]
    if not all(type(v) in (int, float) for v in (bound, slack)) or not (bound > 0 and slack >= 0):
        raise PartyRefusal("run terms: max_update_norm must be > 0 and slack >= 0")
    limit = bound * (1 + slack)
    if limit > MAX_LIMIT or not fits_ring(limit, terms["buckets"]) or not 1 <= terms["sketches"] <= 16:
        raise PartyRefusal(
            f"run terms: bound {limit:g} with {terms['buckets']} buckets and {terms['sketches']} "
            f"sketches cannot be checked in the 64-bit ring"
        )
    weight = terms["max_examples"] if terms["weighting"] == "examples" else 1
    if weight * len(consortium["cards"]) * limit * 2**PRECISION_BITS >= 2**62:
        raise PartyRefusal(
            f"max_examples {terms['max_examples']} is too large: {len(consortium['cards'])} sites "
            f"weighted up to it could wrap the 64-bit ring (and corrupt the sum silently)"
        )
    if not (
        type(terms["layout"]) is list
        and terms["layout"]
        and all(
            type(e) is list
            and len(e) == 2
            and type(e[0]) is str
            and type(e[1]) is list
            and all(type(d) is int and 0 <= d < 2**31 for d in e[1])
            for e in terms["layout"]
        )
    ):
        raise PartyRefusal("run terms: layout must be a non-empty list of [name, [dims]]")
    if type(terms["context"]) is not str or not terms["context"].startswith(f"{terms['run_id']}:"):
        raise PartyRefusal(f"run terms: context {terms['context']!r} must start with the run id {terms['run_id']!r}")
    return terms


def layout_length(layout) -> int:
    n = 0
    for _, dims in layout:
        size = 1
        for d in dims:
            size *= d
        n += size
    return n


def open_site(
    site: str, item, *, terms: Mapping, consortium: Mapping, me: PartyKey, round: int, length: int
) -> tuple[object, int]:
    """(this party's share, the site's weight) of one site's envelope; :class:`ShareError`
    with the reason when the site must be left out."""
    card = consortium["cards"].get(site)
    if card is None:
        raise ShareError(f"{site} is not a site of the accepted roster")
    if (
        type(item) is not dict
        or sorted(item) != ["blob", "header", "statement"]
        or type(item["blob"]) is not bytes
        or type(item["header"]) is not bytes
    ):
        raise ShareError("the relayed envelope must be {statement, header (bytes), blob (bytes)}")
    stmt = item["statement"]
    payload = stmt.get("payload") if type(stmt) is dict else None
    if type(payload) is not dict:
        raise ShareError("the site's secure_shares statement is missing or malformed")
    why = statement_problem(
        stmt,
        site=site,
        round=round,
        run_id=terms["run_id"],
        type_="secure_shares",
        payload=payload,
        key=bytes.fromhex(card["public_key"]),
    )
    if why is not None:
        raise ShareError(f"{why} (the envelope's header is not the site's)")
    if (
        not is_hex(payload.get("header_sha256"), 64)
        or hashlib.sha256(item["header"]).hexdigest() != payload["header_sha256"]
    ):
        raise ShareError("the header relayed is not the one the site signed (header_sha256 differs)")
    header = parse_header(item["header"], f"{site}'s envelope")
    if (header["site"], header["round"], header["context"]) != (site, round, terms["context"]):
        raise ShareError(
            f"the header is labelled {header['site']} round {header['round']} of {header['context']!r}, "
            f"expected {site} round {round} of {terms['context']!r}"
        )
    if header["layout"] != terms["layout"] or sorted(header["parties"]) != sorted(terms["parties"]):
        raise ShareError("the header's parameter layout or parties differ from the run's terms")
    kinds = {p: ("share" if i == 0 else "seed") for i, p in enumerate(terms["parties"])}
    if any(header["parties"][p]["kind"] != k for p, k in kinds.items()):
        raise ShareError("the header gives the vector share to another party than the server's")
    n = header["num_examples"]
    if n != payload.get("num_examples") or header["commitment"] != payload.get("commitment"):
        raise ShareError("the header's example count or commitment differs from the site's statement")
    if not 1 <= n <= terms["max_examples"]:
        raise ShareError(
            f"example count {n} is outside 1..{terms['max_examples']} (the run's cap, max_examples): "
            f"a weight over the cap is refused"
        )
    share = open_share(Envelope(header, {me.name: item["blob"]}), me, length, context=terms["context"], round=round)
    return share, (n if terms["weighting"] == "examples" else 1)
