"""Secure aggregation: the server learns only the weighted sum of the sites' updates.

See ``docs/secure-aggregation.md`` for the threat model and the message diagram.
"""
