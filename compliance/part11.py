"""The 21 CFR Part 11 matrix and ALCOA+ attributes: requirement -> control -> evidence.

Data only. ``who`` says where the control lives: ``pharmafl`` (a technical control the
software enforces and the tests prove), ``shared`` (pharmafl supplies part, the
organisation the rest) or ``organisation`` (procedural: pharmafl cannot do it). Evidence
names tests in ``tests/`` and the ledger event types a reviewer can look up in the audit
trail. Stated plainly so that nobody reads a procedural duty as solved by software.

:data:`SIGNERS` says exactly who signs what (docs/trust-domains.md): the party, the key and
where it lives, and what checks the signature.
"""

from __future__ import annotations

SIGNERS = [
    (
        "Site statements: site_update, clip, privacy_spent (a site's), site_declined, secure_shares",
        "the site",
        "the site's own Ed25519 key, made at `pharmafl site init` and kept in SITE_HOME under the site's passphrase; "
        "pinned by fingerprint in run_started's consortium cards. The coordinator embeds each statement verbatim and "
        "holds no site key.",
        "audit/verify.py: the statement's signature under the pinned key, its type, run and round, never repeated",
    ),
    (
        "Aggregation party statements: party_registered (the run's terms), party_round (sites summed, excluded and "
        "why, bound-check bits, weights, whether a sum was revealed and its hash), party_refused",
        "each aggregation party (the server's party and every helper)",
        "the party's own Ed25519 key, made at `pharmafl party init` and kept in PARTY_HOME under the party's "
        "passphrase; pinned by fingerprint in run_started's consortium party cards. The coordinator holds party "
        "cards only.",
        "audit/verify.py: the statement's signature under the pinned party key, its type, run and round",
    ),
    (
        "Ledger chain: every entry the coordinator writes (run_started, rounds, aggregates, the entries embedding site "
        "statements, registrations of system actors) and every checkpoint",
        "the coordinator (actor server)",
        "the system key in RUN/keys under $PHARMAFL_KEY_PASSPHRASE; it never registers a user key",
        "audit/verify.py: entry signatures, hash chain, RFC 9162 roots",
    ),
    (
        "Checkpoint cosignatures",
        "each site's witness",
        "the site's key, in the C2SP cosignature/v1 form, after checking consistency with the last head it cosigned",
        "audit/verify.py: a quorum of pinned sites (default a majority) on every checkpoint of the run",
    ),
    (
        "E-signatures and every user's own entries (enrolment, logins, password changes, reports, renderings, "
        "exports, refusals of her role)",
        "the user",
        "the user's own key, generated at her first password change and enrolled by her: her actor_key entry answers "
        "the commitment to her one-time enrolment code in the admin-signed user_created; sealed under her password",
        "audit/evidence.py: the enrolment (commitment and MAC), the account active and its role allowing the act",
    ),
    (
        "Account management: user_created (with the enrolment commitment), user_role_changed, user_unlocked, "
        "user_disabled, policy_changed",
        "an active admin (the first admin: herself, self-enrolled at `users init`, trust on first use)",
        "the admin's own enrolled user key",
        "audit/evidence.py: only active admins; no own role change; no admin given a signing role; unique names",
    ),
    (
        "Refusals before authentication: login_failed, login_refused, user_locked",
        "the access-control system actor",
        "the system key in RUN/keys (a refused login cannot be signed by the user it names)",
        "audit/verify.py; audit/evidence.py honours user_locked until an admin's user_unlocked",
    ),
]

PART11 = [
    (
        "11.10(a)",
        "Validation; ability to discern invalid or altered records",
        "shared",
        "Hash-chained, Ed25519-signed, Merkle-checkpointed ledger; standalone verifier names the first altered "
        "entry; reports are refused from a ledger that does not verify; report and package files are hash-checked.",
        "tests/audit/test_tamper.py; tests/compliance/test_report.py::test_tampered_ledger_refuses_report; "
        "tests/compliance/test_evidence.py::test_tampered_report_file_is_rejected. The organisation's own "
        "computer-system validation (IQ/OQ/PQ, intended use) is procedural.",
    ),
    (
        "11.10(b)",
        "Accurate, complete copies in human-readable and electronic form",
        "pharmafl",
        "Reports as PDF and HTML (people) and Parquet/CSV + canonical report.json (machines); ledger export as "
        "JSONL and Parquet; evidence package with SHA-256 manifest.",
        "tests/compliance/test_report.py::test_pdf_text_holds_sections_signature_and_hash; events "
        "report_generated, report_rendered, evidence_exported.",
    ),
    (
        "11.10(c)",
        "Protection of records throughout the retention period",
        "shared",
        "Database triggers refuse UPDATE/DELETE on the ledger; hash chain, signed and witnessed checkpoints make "
        "any change detectable; the user table is written in the same transaction as the ledger entry that records "
        "its change, so a crash cannot leave an account the ledger does not explain; exports are self-verifying.",
        "tests/audit/test_ledger.py (append-only triggers); "
        "tests/compliance/test_access.py::test_a_crash_leaves_the_entry_and_the_table_row_together. Retention "
        "periods, backups and archive media are "
        "procedural (the organisation).",
    ),
    (
        "11.10(d)",
        "Limiting system access to authorised individuals",
        "shared",
        "User accounts with scrypt-hashed passwords (n = 2^17); lockout after repeated failures; disabled accounts; "
        "every login, failure and refusal is a ledger entry; lockout and disablement are ledger facts the offline "
        "verifier honours (a locked or disabled account's e-signature, report or export fails the package).",
        "tests/compliance/test_access.py (lockout, wrong password, disabled); "
        "tests/compliance/test_accounts.py::test_signature_by_a_locked_user_is_rejected_offline; events user_login, "
        "login_failed, user_locked, login_refused. Operating-system and database access to ledger.db and RUN/keys "
        "is procedural.",
    ),
    (
        "11.10(e)",
        "Secure, computer-generated, time-stamped audit trail; changes never obscure prior entries",
        "shared",
        "Every run event and user action is an entry with a UTC timestamp, actor, type and payload, signed and "
        "chained; entries are never changed, corrections are new entries; the audit trail section lists them "
        "all in order, a site's statement under the site that signed it. Who signs what: the table below the "
        "matrix (site statements by the site, the chain and checkpoints by the coordinator, cosignatures by the "
        "sites' witnesses, e-signatures by users' own enrolled keys, refusals by access-control).",
        "tests/compliance/test_report.py::test_audit_trail_filters; tests/audit/test_verify.py. Timestamps are "
        "the writer's clock made monotonic: clock synchronisation (NTP) is procedural.",
    ),
    (
        "11.10(f)",
        "Operational checks enforcing permitted sequencing of steps",
        "shared",
        "A report is generated only from a verifying ledger; a record can be signed only after it was generated "
        "from this run's ledger and only once per user and meaning; users must enrol (set their own password) "
        "before any signed action.",
        "tests/compliance/test_signing.py::test_sign_refuses_unknown_record; "
        "tests/compliance/test_access.py::test_new_user_must_enrol_before_login.",
    ),
    (
        "11.10(g)",
        "Authority checks",
        "pharmafl",
        "Role permissions (compliance/roles.py): only QA reviews and approves, only admins manage users, "
        "regulators change nothing; nobody changes their own role and no admin is given a signing role; each "
        "refusal is an action_refused entry; the standalone verifier replays the roles from the ledger.",
        "tests/compliance/test_access.py::test_refusals_by_role; "
        "tests/compliance/test_access.py::test_no_self_role_change_and_no_signing_role_for_an_admin; "
        "tests/compliance/test_signing.py::test_regulator_cannot_sign; event action_refused.",
    ),
    (
        "11.10(h)",
        "Device checks (validity of the source of data input)",
        "shared",
        "Each site signs what it asserts (update hash, example count, metrics, clipping, ε spent, declines, "
        "secure-aggregation commitments) with its own key made at the site and pinned by fingerprint in "
        "run_started's consortium cards, which also carry each site's data-manifest hash; the coordinator embeds "
        "the statements verbatim and holds no site key; the verifier rejects a statement missing, altered or "
        "signed by another key; the sites' witnesses cosign every checkpoint of the run.",
        "tests/audit/test_verify.py. A site that misreports signs its misreport: the truth of what a site says "
        "stays with the site (procedural).",
    ),
    (
        "11.10(i)",
        "Education, training and experience of people",
        "organisation",
        "None in software.",
        "Training records are procedural.",
    ),
    (
        "11.10(j)",
        "Written policies on accountability for e-signatures",
        "organisation",
        "None in software; the signature meaning is recorded with every signature.",
        "Written policy is procedural.",
    ),
    (
        "11.10(k)",
        "Control over systems documentation",
        "shared",
        "Documentation versioned with the code; each run records the git commit and package versions.",
        "event run_started (git_commit, versions). Distribution and change control of documents is procedural.",
    ),
    (
        "11.50",
        "Signature manifestation: printed name, date and time, meaning",
        "pharmafl",
        "Every human-readable copy (PDF, HTML) carries a signature block with printed name, user id, role, UTC "
        "date and time and meaning; re-rendered at each signing.",
        "tests/compliance/test_report.py::test_pdf_text_holds_sections_signature_and_hash; "
        "tests/compliance/test_evidence.py::test_rendering_missing_a_signature_is_rejected; event report_rendered.",
    ),
    (
        "11.70",
        "Signature/record linking",
        "pharmafl",
        "The signature covers the record's SHA-256; the standalone verifier recomputes it and rejects a "
        "signature copied onto another record.",
        "tests/compliance/test_evidence.py::test_signature_copied_onto_another_record_is_rejected; event e_signature.",
    ),
    (
        "11.100",
        "Signatures unique to one individual, never reused or reassigned",
        "shared",
        "User ids and printed names are never reused; each user's key is enrolled once, by the user; identity "
        "verification before issuing an account and certification to FDA are procedural.",
        "tests/compliance/test_access.py::test_user_ids_are_never_reused; "
        "tests/compliance/test_access.py::test_printed_names_are_unique. Identity proofing and the FDA "
        "letter of certification are procedural.",
    ),
    (
        "11.200",
        "Two components (id + password), at each signing; use only by the genuine owner",
        "shared",
        "Both components are required at every signing (no session shortcut); the signing key is generated when "
        "the user sets their own password and is sealed under it, and enrolled by her: the registrar never "
        "registers a user key, and the enrolment must answer the admin-signed commitment to the temporary password "
        "(checked offline), so the system passphrase alone cannot make a key for a user who has not enrolled. An "
        "admin who enrols first with the temporary password locks the user out of it, which the user notices and "
        "reports (the enrolment shows when).",
        "tests/compliance/test_signing.py::test_sign_needs_the_password_each_time; "
        "tests/compliance/test_access.py::test_admin_cannot_sign_as_new_user; "
        "tests/compliance/test_enrolment.py::test_system_passphrase_cannot_register_a_user_key; "
        "tests/compliance/test_enrolment.py::test_forged_enrolment_fails_the_evidence_package. Handing the "
        "temporary password to the user alone, and acting when it does not work, are procedural.",
    ),
    (
        "11.300",
        "Controls for identification codes and passwords",
        "shared",
        "Unique ids; password policy (length, character mix, not the id/name); ageing (max_age_days); lockout "
        "after max_failed_logins with ledger entries; disable for lost credentials; lockout and disablement are "
        "honoured by the offline verifier; passwords and sealed keys under scrypt n = 2^17 (a cheaper KDF only "
        "through the test-only policy, which production refuses).",
        "tests/compliance/test_access.py (expired password, lockout, disable); events login_failed, user_locked, "
        "policy_changed. Periodic review of accounts and loss management are procedural.",
    ),
]

ALCOA = [
    (
        "Attributable",
        "Every entry is signed by its writer's registered key; a site's statements by the site's own "
        "pinned key; user entries by a key the user enrolled herself and only her password opens.",
    ),
    ("Legible", "PDF/HTML reports; canonical JSON that any RFC 8785 library reproduces."),
    (
        "Contemporaneous",
        "Entries are timestamped when written (UTC, never decreasing); the clock is the "
        "writer's (synchronisation is procedural).",
    ),
    ("Original", "The ledger is the original record; exports and reports carry hashes that tie them to it."),
    (
        "Accurate",
        "Hashes and signatures prove entries unchanged since written; they cannot prove a party told "
        "the truth (a site that misreports signs the misreport).",
    ),
    (
        "Complete",
        "Sequence numbers without gaps; truncation is caught only against a trusted head handed over out of band.",
    ),
    ("Consistent", "One chronological chain; Merkle checkpoints and consistency proofs between heads."),
    ("Enduring", "Append-only storage and self-verifying exports; retention and backups are procedural."),
    ("Available", "Export at any time; the standalone verifier needs only Python and cryptography."),
]


def signer_rows() -> list[dict]:
    return [{"what": w, "signed_by": s, "key": k, "checked_by": c} for w, s, k, c in SIGNERS]


def part11_rows() -> list[dict]:
    return [{"requirement": r, "asks": a, "who": w, "control": c, "evidence": e} for r, a, w, c, e in PART11]


def alcoa_rows() -> list[dict]:
    return [{"attribute": a, "how": h} for a, h in ALCOA]
