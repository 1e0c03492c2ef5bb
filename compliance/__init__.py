"""Compliance: users and roles, e-signatures, Part 11-style reports, evidence packages.

Reads and writes the run's ledger (:mod:`pharmafl.audit`); nothing in the pipeline imports it.

==================  ====================================================================
``access``          :class:`AccessControl`: users, logins, lockout, ageing, authority checks
``roles``           who may do what (pure table)
``credentials``     scrypt password hashes, signing keys sealed under the password, policy
``enrolment``       the commitment in ``user_created`` and the user's answer when she enrols her key
``users``           the user table beside the ledger, written in its ledger entry's transaction
``signatures``      the e-signature message, its manifestation
``signing``         ``pharmafl sign``: sign a record, re-render its copies
``report``          ``pharmafl report``: record, plots, PDF/HTML/Parquet, ledger entry
``trail``, ``sections``, ``part11``   the report's sections (pure functions and data)
``render_pdf``, ``render_html``, ``plots``   the human-readable copies
``evidence``        ``pharmafl evidence export``; verified by :mod:`pharmafl.audit.evidence`
``cli``             the commands, mounted by :mod:`pharmafl.pipeline.cli`
==================  ====================================================================

See ``docs/compliance.md``.
"""
