"""Accounting: receipts, credit and the ledger, for one peer in both roles
(docs/incentives.md). Built by ``PeerServices``; the invoke server and client call it
through the hooks they are given.

    accountant.py  Accountant, AccountingConfig, Admission, Issued, record_hash,
                   machine_fingerprint:
                   admits calls by credit, issues and stores receipts as a provider,
                   checks and stores them and acknowledges running totals as a caller
"""

from p2pnet.accounting.accountant import (
    DEFAULT_ACCOUNTING,
    Accountant,
    AccountingConfig,
    Admission,
    Issued,
    machine_fingerprint,
    record_hash,
)

__all__ = [
    "DEFAULT_ACCOUNTING",
    "Accountant",
    "AccountingConfig",
    "Admission",
    "Issued",
    "machine_fingerprint",
    "record_hash",
]
