"""``TrustStore``: the verdicts of this peer's spot checks, the evidence behind each, and
the providers it no longer trusts, in one SQLite file that survives a restart.

A verdict names the model, the provider checked, who gave the second (and third)
opinion, the outcome, the comparison (how the results differed and by how much) and
the signed receipts of each provider's result: the provider's own commitment to what it
returned. A provider marked untrusted stays so until ``forget``; the finder skips it.

The file is made like the ledger's (p2pnet/ledger/store.py): mode 0600 in a directory
0700, ``PRAGMA application_id`` telling it from another program's database, WAL, and a
clear TrustStoreError naming the file when it is not one of ours or is damaged.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from p2pnet.config import data_dir
from p2pnet.errors import TrustStoreError
from p2pnet.sqlite_file import (
    FileKind,
    SqliteStore,
    check_file,
    connect,
    create_schema,
    sqlite_errors,
    use_wal,
)

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "Mark",
    "Opinion",
    "Outcome",
    "StoredVerdict",
    "TrustStore",
    "default_trust_path",
]

# PRAGMA application_id of a p2pnet trust store ("p2pT").
APPLICATION_ID: Final = 0x70327054
SCHEMA_VERSION: Final = 1

Outcome = Literal["agree", "disagree", "unresolved"]
"""agree: the second opinion agreed. disagree: further opinions found the odd one out (it
is marked). unresolved: the results differ and no further opinion settled it."""

_SCHEMA: Final = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE verdicts (
    id INTEGER PRIMARY KEY,
    checked_at INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('agree', 'disagree', 'unresolved')),
    marked TEXT,
    opinions TEXT NOT NULL,
    comparisons TEXT NOT NULL
);
CREATE INDEX verdicts_by_provider ON verdicts (provider, id);
CREATE TABLE evidence (
    verdict INTEGER NOT NULL REFERENCES verdicts (id),
    peer TEXT NOT NULL,
    receipt BLOB NOT NULL,
    PRIMARY KEY (verdict, peer)
) WITHOUT ROWID;
CREATE TABLE untrusted (
    peer TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    since INTEGER NOT NULL,
    verdict INTEGER NOT NULL REFERENCES verdicts (id)
) WITHOUT ROWID;
"""
_TABLES: Final = ("evidence", "meta", "untrusted", "verdicts")
_KIND: Final = FileKind(
    noun="trust store",
    error=TrustStoreError,
    application_id=APPLICATION_ID,
    schema_version=SCHEMA_VERSION,
    tables=_TABLES,
    start_anew="a new one (the verdicts in it are lost)",
)


def default_trust_path(peer_id: str) -> Path:
    """``$XDG_DATA_HOME/p2pnet/trust/<peer-id>.sqlite3``: one file per identity."""
    return data_dir() / "trust" / f"{peer_id}.sqlite3"


@dataclass(frozen=True, slots=True)
class Opinion:
    """One result of a spot check: whose (``peer``; this peer's own ID for a local run),
    its tensor hash, the runtime fingerprint it ran under ("" if unknown), and the signed
    receipt that commits to it (None for a local run or a provider without accounts)."""

    peer: str
    result_hash: bytes
    runtime: str
    receipt: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "result_hash": self.result_hash.hex(),
            "runtime": self.runtime,
            "receipt": self.receipt.hex() if self.receipt is not None else None,
        }


@dataclass(frozen=True, slots=True)
class StoredVerdict:
    """A verdict as kept: ``opinions`` first the provider checked, then the checker, then
    the further opinions in the order heard; ``comparisons`` ("first-second", ...) -> the
    comparison's dict (``p2pnet.core.spot_check.Comparison.to_dict``); ``marked`` the
    peer marked untrusted by it, if any; ``checked_at`` unix milliseconds."""

    id: int
    checked_at: int
    model_id: str
    provider: str
    outcome: Outcome
    marked: str | None
    opinions: tuple[Opinion, ...]
    comparisons: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "checked_at": self.checked_at,
            "model_id": self.model_id,
            "provider": self.provider,
            "outcome": self.outcome,
            "marked": self.marked,
            "opinions": [o.to_dict() for o in self.opinions],
            "comparisons": self.comparisons,
        }


@dataclass(frozen=True, slots=True)
class Mark:
    """A provider this peer no longer trusts: since when (unix ms), for which model, by
    which verdict."""

    peer: str
    model_id: str
    since: int
    verdict: int


class TrustStore(SqliteStore):
    """One peer's spot-check verdicts and marks. Open it with ``TrustStore.open``. The
    set of untrusted providers is held in memory too: ``is_untrusted`` is asked for every
    offer of every find. Safe to call from several threads (one connection, a lock).

    Raises (every method): TrustStoreError naming the file when SQLite reports it corrupt,
    full or unwritable.
    """

    kind = _KIND

    def __init__(
        self, path: Path, connection: sqlite3.Connection, clock: Callable[[], float]
    ) -> None:
        super().__init__(path, connection)
        self._clock = clock
        self._untrusted = {m.peer for m in self.marks()}

    @classmethod
    def open(
        cls, path: Path, *, create: bool = True, clock: Callable[[], float] = time.time
    ) -> TrustStore:
        """Open the store at ``path``, creating it (mode 0600, its directory 0700) if
        ``create`` and it does not exist. ``clock``: unix seconds, for the times kept.

        Raises:
            TrustStoreError: no file and not ``create``; a file that is not an SQLite
                database, is another program's, has a newer schema or is damaged, or
                cannot be created or written; the message names the file.
        """
        path = Path(path)
        db = connect(
            path,
            _KIND,
            create=create,
            absent="no spot check recorded yet",
            prepare=lambda db: _prepare(path, db, clock),
        )
        return cls(path, db, clock)

    # --- writing ---------------------------------------------------------------------

    def record(
        self,
        *,
        model_id: str,
        outcome: Outcome,
        opinions: tuple[Opinion, ...],
        comparisons: dict[str, dict[str, Any]],
        marked: str | None = None,
    ) -> StoredVerdict:
        """Keep a verdict (the provider checked is ``opinions[0].peer``) and its
        evidence, and mark ``marked`` untrusted, in one transaction; return it.

        Raises:
            ValueError: no opinion, or ``marked`` is not one of the opinions' peers.
        """
        if not opinions:
            raise ValueError("a verdict needs at least the opinion of the provider checked")
        if marked is not None and marked not in {o.peer for o in opinions}:
            raise ValueError(f"peer {marked} marked untrusted gave no opinion in this check")
        now = int(self._clock() * 1000)
        provider = opinions[0].peer
        with self._writing() as db:
            cursor = db.execute(
                "INSERT INTO verdicts (checked_at, model_id, provider, outcome, marked, "
                "opinions, comparisons) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    now,
                    model_id,
                    provider,
                    outcome,
                    marked,
                    json.dumps([_opinion_row(o) for o in opinions]),
                    json.dumps(comparisons, sort_keys=True),
                ),
            )
            verdict = cursor.lastrowid
            assert verdict is not None
            for opinion in opinions:
                if opinion.receipt is not None:
                    db.execute(
                        "INSERT OR IGNORE INTO evidence (verdict, peer, receipt) VALUES (?, ?, ?)",
                        (verdict, opinion.peer, opinion.receipt),
                    )
            if marked is not None:
                db.execute(
                    "INSERT OR IGNORE INTO untrusted (peer, model_id, since, verdict) "
                    "VALUES (?, ?, ?, ?)",
                    (marked, model_id, now, verdict),
                )
        if marked is not None:
            self._untrusted.add(marked)
        return StoredVerdict(
            verdict, now, model_id, provider, outcome, marked, opinions, comparisons
        )

    def forget(self, peer: str) -> bool:
        """Trust ``peer`` again (its verdicts stay); False if it was not marked."""
        with self._writing() as db:
            removed = db.execute("DELETE FROM untrusted WHERE peer = ?", (peer,)).rowcount
        self._untrusted.discard(peer)
        return bool(removed)

    # --- reading ---------------------------------------------------------------------

    def is_untrusted(self, peer: str) -> bool:
        """Whether ``peer`` is marked (from memory: no query)."""
        return peer in self._untrusted

    def marks(self) -> list[Mark]:
        """Every provider marked untrusted, the oldest mark first."""
        with self._locked() as db:
            rows = db.execute(
                "SELECT peer, model_id, since, verdict FROM untrusted ORDER BY since, peer"
            ).fetchall()
        return [Mark(str(p), str(m), int(s), int(v)) for p, m, s, v in rows]

    def verdicts(
        self, peer: str | None = None, *, outcome: Outcome | None = None, limit: int = 1000
    ) -> list[StoredVerdict]:
        """The latest ``limit`` verdicts, newest first: all, or those about ``peer`` as
        the provider checked or one giving an opinion, or of one ``outcome``."""
        query = (
            "SELECT id, checked_at, model_id, provider, outcome, marked, opinions, "
            "comparisons FROM verdicts"
        )
        where: list[str] = []
        args: list[Any] = []
        if peer is not None:
            where.append("(provider = ? OR instr(opinions, ?) > 0)")
            args += [peer, json.dumps(peer)]
        if outcome is not None:
            where.append("outcome = ?")
            args.append(outcome)
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._locked() as db:
            rows = db.execute(query, args).fetchall()
            receipts: dict[tuple[int, str], bytes] = {}
            for row in rows:
                for who, receipt in db.execute(
                    "SELECT peer, receipt FROM evidence WHERE verdict = ?", (row[0],)
                ):
                    receipts[(row[0], who)] = bytes(receipt)
        return [self._verdict(row, receipts) for row in rows]

    def counts(self) -> dict[str, int]:
        """How many verdicts of each outcome are kept."""
        with self._locked() as db:
            rows = db.execute("SELECT outcome, count(*) FROM verdicts GROUP BY outcome")
            found = {str(o): int(n) for o, n in rows}
        return {o: found.get(o, 0) for o in ("agree", "disagree", "unresolved")}

    # --- internals -------------------------------------------------------------------

    def _verdict(self, row: Any, receipts: dict[tuple[int, str], bytes]) -> StoredVerdict:
        vid, checked_at, model_id, provider, outcome, marked, opinions, comparisons = row
        try:
            parsed = tuple(
                Opinion(
                    str(o["peer"]),
                    bytes.fromhex(o["result_hash"]),
                    str(o["runtime"]),
                    receipts.get((vid, str(o["peer"]))),
                )
                for o in json.loads(opinions)
            )
            compared = json.loads(comparisons)
        except (ValueError, KeyError, TypeError) as exc:
            raise TrustStoreError(
                f"{self.path} is damaged: verdict {vid} cannot be read ({exc})"
            ) from None
        return StoredVerdict(
            int(vid),
            int(checked_at),
            str(model_id),
            str(provider),
            outcome,
            marked,
            parsed,
            compared,
        )


def _opinion_row(opinion: Opinion) -> dict[str, str]:
    return {
        "peer": opinion.peer,
        "result_hash": opinion.result_hash.hex(),
        "runtime": opinion.runtime,
    }


def _prepare(path: Path, db: sqlite3.Connection, clock: Callable[[], float]) -> None:
    with sqlite_errors(path, _KIND):
        if check_file(path, db, _KIND) is None:
            statements = [st for st in _SCHEMA.split(";") if st.strip()]
            create_schema(path, db, _KIND, statements, {"created_at": str(int(clock()))})
        # A verdict lost to a power cut is re-found by the next checks: NORMAL is enough.
        use_wal(path, db, _KIND, "NORMAL")
