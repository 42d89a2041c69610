"""Trust in an open swarm: spot checks of providers' results, and what this peer keeps
of them (docs/security.md, "Spot checks"). The decisions are pure
(``p2pnet.core.spot_check``); this package runs them and keeps their verdicts.

checker.py      SpotChecker             re-runs a sample of calls on another provider or
                                        here, compares, asks a third opinion on a
                                        mismatch, marks the odd one out
                ReceiptKeeper           the caller's accounts, keeping the last receipts
                                        accepted (the evidence of a verdict)
                SpotCheckStats          what the checker did
store.py        TrustStore              verdicts, their evidence and the untrusted
                                        providers in one SQLite file
                StoredVerdict, Opinion, Mark   what it keeps
                default_trust_path      $XDG_DATA_HOME/p2pnet/trust/<peer-id>.sqlite3
"""

from p2pnet.trust.store import (
    Mark,
    Opinion,
    StoredVerdict,
    TrustStore,
    default_trust_path,
)

__all__ = ["Mark", "Opinion", "StoredVerdict", "TrustStore", "default_trust_path"]
