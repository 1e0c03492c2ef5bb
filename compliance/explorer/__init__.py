"""A read-only web explorer of a run's ledger for QA staff and regulators (``pharmafl explore``).

::

    source.py       open PATH (run directory, PostgreSQL URL, bundle, evidence package); verify and index it
    index.py        the private SQLite copy of the verified ledger and its Merkle tree; paged queries
    views.py        each page's data, from the report's own section functions
    checks.py       an entry page's checks: hash, chain, signature, statement, inclusion proof, cosignatures
    render.py       the pages as HTML (templates in compliance/templates/explorer/, sections shared with the report)
    links.py        where pages link: the live server's URLs or the static export's files
    app.py          the web application (GET only, Host check, per-launch token, strict CSP)
    static_site.py  the same pages as files, written into an evidence package
    cli.py          ``pharmafl explore PATH``
    static/         the one stylesheet and the one script, vendored (no CDN)
"""
