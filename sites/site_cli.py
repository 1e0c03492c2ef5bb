"""``pharmafl site``: what a site runs at the site: set up its home, show its card, agree to a
consortium, name its home in its NVFlare startup kit (``nvflare-config``, sites/kit.py), and
audit a run's ledger against what it signed and what its witness saw.

Mounted by the main CLI as ``pharmafl site ...``. The passphrase of the site key comes from
``$PHARMAFL_SITE_PASSPHRASE``. Bad or missing input prints one ``error: ...`` line and exits 2;
an audit that finds a statement missing or altered, or a ledger the witness never saw, exits 1.

**Site audit** (``docs/trust-domains.md``, "Site audit"), for each run in ``SITE_HOME/runs``
that the ledger records (its ``run_started`` entry):

1. every entry's ``entry_hash`` is recomputed from its contents, and the chain of
   ``prev_hash`` links holds;
2. the site's witness holds a head for the run's log (size ``S``, root ``R``): the ledger
   has at least ``S`` entries (not truncated) and the Merkle root of its first ``S`` is
   ``R`` (no split view, nothing rewritten);
3. every statement in ``runs/<run_id>/statements.jsonl`` is embedded verbatim in exactly one
   entry of its type, below ``S``, with an RFC 9162 inclusion proof against ``R``.

Only the card, the statements and the witness heads are read: no passphrase is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from pharmafl.audit import messages, rfc9162
from pharmafl.audit.merkle import MerkleTree
from pharmafl.audit.witness import Witness
from pharmafl.errors import ConfigError, RefusedError
from pharmafl.sites.validation import MODEL_WINDOW

CARD_FILE = "site-card.json"  # sites/home.py's (it imports pandas and torch: only inside the commands)

app = typer.Typer(help="A site's home: its data, key, card, privacy ledger and witness.", no_args_is_help=True)

Home = Annotated[Path, typer.Argument(metavar="HOME", help="the site home (pharmafl site init --home)")]
ENTRY_FIELDS = ("actor", "entry_hash", "payload", "prev_hash", "seq", "signature", "ts", "type")


class AuditFailure(RefusedError):
    """The ledger does not hold what the site signed, or is not the log its witness saw."""


@app.command("init")
def init_command(
    data: Annotated[
        Path, typer.Argument(metavar="TABLES", help="directory of drugs/targets/measurements tables, or a store")
    ],
    site: Annotated[str, typer.Option("--id", help="the site id, e.g. site-01")],
    home: Annotated[Path, typer.Option("--home", help="the site home to create (new or empty directory)")],
    val_fraction: Annotated[float, typer.Option(help="share of the training rows kept for validation")] = 0.1,
    seed: Annotated[int, typer.Option(help="seed of the local split")] = 0,
    epsilon_budget: Annotated[float | None, typer.Option(help="the site's ε budget across runs")] = None,
    delta: Annotated[float | None, typer.Option(help="the site's δ (default: each run's)")] = None,
    max_len: Annotated[
        int, typer.Option(min=1, help="the runs' model.max_len: the manifest counts the target sequences it cuts")
    ] = MODEL_WINDOW,
) -> None:
    """Validate the site's tables, store them, generate the site key, sign the site card."""
    from pharmafl.sites.home import PASSPHRASE_ENV, SiteHome
    from pharmafl.sites.tables import load_dataset

    passphrase = os.environ.get(PASSPHRASE_ENV, "")
    if not passphrase:
        raise ConfigError(f"set ${PASSPHRASE_ENV} to the passphrase that will protect {site}'s key")
    dataset = load_dataset(Path(data))
    created = SiteHome.init(
        home,
        site,
        dataset,
        passphrase=passphrase,
        val_fraction=val_fraction,
        seed=seed,
        epsilon_budget=epsilon_budget,
        delta=delta,
        max_len=max_len,
    )
    typer.echo(created.fingerprint)
    typer.echo(f"wrote {home}: card {home / CARD_FILE}", err=True)


@app.command("card")
def card_command(home: Home) -> None:
    """Print the site card (what the site hands the coordinator)."""
    from pharmafl.sites.home import check_card, read_json

    card = check_card(read_json(home / CARD_FILE, "site card"), str(home / CARD_FILE))
    typer.echo(json.dumps(card, indent=1, sort_keys=True))


@app.command("accept")
def accept_command(
    home: Home,
    consortium: Annotated[Path, typer.Argument(metavar="CONSORTIUM", help="the coordinator's consortium.json")],
):
    """Agree to a consortium: its cards checked, this site's own card in it unchanged."""
    from pharmafl.sites.home import SiteHome, read_json

    site = SiteHome.open(home)
    digest = site.accept_consortium(read_json(consortium, "consortium"))
    typer.echo(f"{site.site} accepted roster {digest}")


@app.command("nvflare-config")
def nvflare_config_command(
    home: Home,
    kit: Annotated[Path, typer.Option("--kit", help="this site's NVFlare startup kit (from the coordinator)")],
    cache_dir: Annotated[Path | None, typer.Option(help="folder for the featurization cache (default: none)")] = None,
) -> None:
    """Name this site's home in its own NVFlare startup kit (KIT/local/pharmafl.json, sites/kit.py)."""
    from pharmafl.sites.kit import write_site_config

    typer.echo(f"wrote {write_site_config(kit, home, cache_dir)}")


@app.command("audit")
def audit_command(
    home: Home,
    ledger: Annotated[Path, typer.Argument(metavar="LEDGER", help="an exported bundle, run dir or ledger.db")],
):
    """Check that each statement the site signed is in the ledger unmodified, under a head its witness cosigned."""
    typer.echo(audit_site(home, read_ledger(ledger)))


# --- the audit ---------------------------------------------------------------------------


def read_ledger(path: Path) -> list[dict]:
    """The entries of an exported bundle (``entries.jsonl``), or of a run dir / ledger.db
    through ``pharmafl.audit.dbsource.entries`` (export-form entry dicts, in order)."""
    path = Path(path)
    if (path / "entries.jsonl").is_file():
        return _entries(_jsonl(path / "entries.jsonl"), path / "entries.jsonl")
    if not path.exists():
        raise ConfigError(f"{path}: no such bundle, run directory or ledger database")
    from pharmafl.audit.dbsource import rows  # the database adapter, outside the site's code
    from pharmafl.audit.verify import VerificationError

    fields = ("seq", "ts", "actor", "type", "payload", "prev_hash", "entry_hash", "signature")
    try:
        with rows(path) as (entries, _, _):
            found = [dict(zip(fields, r)) for r in entries]
    except VerificationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for row in found:
        try:
            row["payload"] = json.loads(row["payload"])
        except ValueError as exc:
            raise AuditFailure(f"{path}: entry {row['seq']}: payload is not JSON ({exc})") from None
    return _entries(found, path)


def _jsonl(path: Path) -> list[Any]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            raise AuditFailure(f"{path}, line {i}: not JSON ({exc})") from None
    return rows


def _entries(rows: list[Any], where: Path) -> list[dict]:
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or tuple(sorted(row)) != ENTRY_FIELDS or not isinstance(row["payload"], dict):
            raise AuditFailure(f"{where}: entry {i} is malformed (expected the fields {list(ENTRY_FIELDS)})")
    return rows


def _leaves(entries: list[dict]) -> list[bytes]:
    """Leaf hashes of the entries, after checking each one's hash and the chain."""
    prev, leaves = messages.GENESIS, []
    for i, e in enumerate(entries):
        try:
            body = messages.entry_message(
                e["seq"], e["ts"], e["actor"], e["type"], messages.canonical(e["payload"]), e["prev_hash"]
            )
            leaf = rfc9162.leaf_hash(bytes.fromhex(e["entry_hash"]) + bytes.fromhex(e["signature"]))
        except (ValueError, TypeError) as exc:
            raise AuditFailure(f"ledger entry {i} is malformed ({exc})") from None
        if e["seq"] != i or e["prev_hash"] != prev:
            raise AuditFailure(
                f"ledger entry {i}: seq {e['seq']} / prev_hash break the chain (entries removed or reordered)"
            )
        if hashlib.sha256(body).hexdigest() != e["entry_hash"]:
            raise AuditFailure(f"ledger entry {i} ({e['type']}): entry_hash does not match its contents (altered)")
        prev = e["entry_hash"]
        leaves.append(leaf)
    return leaves


def _what(stmt: dict) -> str:
    return f"{stmt.get('type')} statement of round {stmt.get('round')} in run {stmt.get('run_id')}"


def audit_site(home: Path, entries: list[dict]) -> str:
    """Audit ``entries`` (a ledger, in order) against ``home``; the one-line summary, or
    :class:`AuditFailure` naming the first problem."""
    from pharmafl.sites.home import check_card, read_json, read_lines

    home = Path(home)
    card = check_card(read_json(home / CARD_FILE, "site card"), str(home / CARD_FILE))
    site = card["site"]
    witness = Witness(home / "witness", site, _no_signing, bytes.fromhex(card["public_key"]), accepted_rosters=set())
    leaves = _leaves(entries)
    tree = MerkleTree(leaves)
    started = {e["payload"].get("run_id"): e for e in entries if e["type"] == "run_started"}
    ours = sorted(p.name for p in (home / "runs").glob("*") if (p / "statements.jsonl").is_file())
    runs = [r for r in ours if r in started]
    if not runs:
        raise AuditFailure(
            f"the ledger records none of {site}'s runs ({', '.join(ours) or 'none in ' + str(home)}); "
            f"it records {sorted(map(str, started)) or 'no run'}"
        )
    embedded: dict[str, list[int]] = {}
    for e in entries:
        stmt = e["payload"].get("statement")
        if isinstance(stmt, dict):
            embedded.setdefault(messages.canonical(stmt), []).append(e["seq"])
    checked, heads = 0, []
    for run in runs:
        size, root = _witnessed(witness, run, started[run], card, tree)
        heads.append(size)
        for stmt in read_lines(home / "runs" / run / "statements.jsonl"):
            _included(stmt, embedded.get(messages.canonical(stmt), []), entries, tree, size, root)
            checked += 1
    return (
        f"OK: {site}: {checked} signed statement(s) of {len(runs)} run(s) ({', '.join(runs)}) are in the ledger "
        f"unmodified, under the head(s) of size {', '.join(map(str, heads))} its witness cosigned"
    )


def _no_signing(message: bytes) -> bytes:
    raise AuditFailure("the audit only reads the witness's heads; it never cosigns")


def _witnessed(witness: Witness, run: str, started: dict, card: dict, tree: MerkleTree) -> tuple[int, bytes]:
    """The head the site's witness cosigned for ``run``, checked against the ledger."""
    pinned = ((started["payload"].get("consortium") or {}).get("cards") or {}).get(card["site"])
    if not isinstance(pinned, dict) or pinned.get("public_key") != card["public_key"]:
        raise AuditFailure(f"run {run}: run_started does not pin {card['site']}'s own key {card['public_key'][:16]}...")
    head = witness.head(messages.origin_of(run))
    if head is None:
        raise AuditFailure(
            f"run {run}: {card['site']}'s witness never cosigned this log, so nothing the site saw "
            "binds it; the site's statements cannot be audited"
        )
    size, root, n = head["tree_size"], bytes.fromhex(head["root_hash"]), len(tree)
    if n < size:
        raise AuditFailure(
            f"run {run}: the ledger holds {n} entries, fewer than the {size} the site's witness "
            "cosigned: it was truncated"
        )
    if tree.root(size) != root:
        raise AuditFailure(
            f"run {run}: the ledger's root at size {size} is {tree.root(size).hex()}, not the "
            f"{root.hex()} the site's witness cosigned: a split view or a rewritten log"
        )
    return size, root


def _included(stmt: dict, seqs: list[int], entries: list[dict], tree: MerkleTree, size: int, root: bytes) -> None:
    """``stmt`` is embedded verbatim in exactly one entry of its type, included under the head."""
    if not seqs:
        key = (stmt.get("site"), stmt.get("type"), stmt.get("round"), stmt.get("run_id"))
        for e in entries:
            other = e["payload"].get("statement")
            if (
                isinstance(other, dict)
                and (other.get("site"), other.get("type"), other.get("round"), other.get("run_id")) == key
            ):
                raise AuditFailure(f"the site's {_what(stmt)} was altered: entry {e['seq']} embeds a different one")
        raise AuditFailure(f"the site's {_what(stmt)} is missing from the ledger")
    if len(seqs) > 1:
        raise AuditFailure(f"the site's {_what(stmt)} is embedded in {len(seqs)} entries ({seqs}), not one")
    seq = seqs[0]
    if entries[seq]["type"] != stmt["type"]:
        raise AuditFailure(f"the site's {_what(stmt)} is embedded in entry {seq} of type {entries[seq]['type']!r}")
    if seq >= size:
        raise AuditFailure(
            f"the site's {_what(stmt)} is in entry {seq}, beyond the head of size {size} its "
            "witness cosigned: nothing the site saw covers it"
        )
    leaf = rfc9162.leaf_hash(bytes.fromhex(entries[seq]["entry_hash"]) + bytes.fromhex(entries[seq]["signature"]))
    if not rfc9162.verify_inclusion(seq, size, leaf, tree.inclusion_proof(seq, size), root):
        raise AuditFailure(f"the site's {_what(stmt)}: entry {seq} has no valid inclusion proof under the head")
