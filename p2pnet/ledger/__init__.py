"""The ledger: what this peer served and consumed, per peer, in a file that loses nothing
(docs/incentives.md). Above core, beside the runtime: no trio, no libp2p; its callers
call it from the event loop (a receipt's commit takes ~25-60 us).

store.py        Ledger                  one peer's SQLite ledger (WAL; peers use
                                        synchronous NORMAL): record_receipt (one statement)
                                        / record_acknowledgement, each one committed
                                        transaction; balances, receipts, last,
                                        totals, audit, export
                StoredReceipt           a receipt's fields and its signed envelope
                StoredAcknowledgement   a caller's signed running total of a pair
                ChainHead, PeerBalance, LedgerTotals   what the queries return
                default_ledger_path     $XDG_DATA_HOME/p2pnet/ledger/<peer-id>.sqlite3
receipt_log.py  export_log, verify_log  receipt logs as JSON lines; their chain-link,
                                        total and (injected) signature checks
                receipt_fields          a stored receipt's fields as JSON values
signed.py       stored_receipt,         a signed envelope, verified, as the row the
                stored_acknowledgement, ledger stores (the checks verify_log is given);
                stored_form,            a receipt (an acknowledgement) and its envelope,
                acknowledgement_form    already verified, as that row
"""

from p2pnet.ledger.receipt_log import ReceiptLogSummary, export_log, receipt_fields, verify_log
from p2pnet.ledger.signed import stored_acknowledgement, stored_receipt
from p2pnet.ledger.store import (
    ChainHead,
    Ledger,
    LedgerTotals,
    PeerBalance,
    StoredAcknowledgement,
    StoredReceipt,
    default_ledger_path,
)

__all__ = [
    "ChainHead",
    "Ledger",
    "LedgerTotals",
    "PeerBalance",
    "ReceiptLogSummary",
    "StoredAcknowledgement",
    "StoredReceipt",
    "default_ledger_path",
    "export_log",
    "receipt_fields",
    "stored_acknowledgement",
    "stored_receipt",
    "verify_log",
]
