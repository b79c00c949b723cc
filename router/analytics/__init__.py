"""Routing analytics over the decision ledger: `triage analytics ...`."""
