"""``Ledger``: usage receipts, acknowledgements and per-peer balances in one SQLite file
that loses nothing once a write has returned.

Durability: the file is in WAL mode. With ``synchronous=NORMAL`` (what peers use) a
commit survives a crash of the process (SIGKILL) but may be rolled back by a power loss
or a kernel crash; with ``FULL`` (the default of ``Ledger.open``) a commit returns only
after the write-ahead log is fsynced, so it survives those too, at ~0.15 ms more per
commit here (``scripts/bench/ledger.py`` measures both).

Balances are kept in their own table, updated by a trigger in the same statement as the
receipt that changes them (reading a balance is one row, on every call), and ``audit`` checks
them against the sums of the receipts. A balance is signed from this peer's side: the
units this peer served the other (as provider) minus the units the other served it (as
caller); positive means the other peer owes this one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal

from p2pnet.config import data_dir
from p2pnet.errors import LedgerConflictError, LedgerError
from p2pnet.sqlite_file import (
    FileKind,
    SqliteStore,
    check_file,
    connect,
    create_schema,
    sqlite_errors,
    unwritable,
    use_wal,
)

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "ZERO_HASH",
    "ChainHead",
    "Ledger",
    "LedgerTotals",
    "PeerBalance",
    "Role",
    "StoredAcknowledgement",
    "StoredReceipt",
    "default_ledger_path",
]

Role = Literal["provider", "caller"]
Synchronous = Literal["FULL", "NORMAL"]

# PRAGMA application_id of a p2pnet ledger ("p2pL"): tells our file from another
# program's SQLite database. PRAGMA user_version holds the schema version.
APPLICATION_ID: Final = 0x7032704C
SCHEMA_VERSION: Final = 2
ZERO_HASH: Final = bytes(32)

# What schema 2 added to schema 1: recording a receipt is one INSERT, and these keep the
# rules inside it (one statement, one implicit transaction: ~25 us where the same checks
# and update as separate statements in an explicit transaction took ~40 us).
_TRIGGERS: Final = {
    # A receipt whose predecessor (seq - 1) is held must link to it; a gap is allowed:
    # this ledger may have started after the pair's first receipts.
    "receipt_links": """
CREATE TRIGGER receipt_links BEFORE INSERT ON receipts
WHEN NEW.seq > 1 AND EXISTS (
    SELECT 1 FROM receipts
    WHERE provider = NEW.provider AND caller = NEW.caller AND seq = NEW.seq - 1
        AND receipt_hash != NEW.prev_hash
)
BEGIN
    SELECT RAISE(ABORT, 'receipt does not link to the one held before it');
END;
""",
    # The other peer's balance moves by the receipt's units, in the same transaction.
    "receipt_moves_balance": """
CREATE TRIGGER receipt_moves_balance AFTER INSERT ON receipts
BEGIN
    INSERT INTO balances (peer, served_units, consumed_units, updated_at)
    VALUES (
        iif(NEW.role = 'provider', NEW.caller, NEW.provider),
        iif(NEW.role = 'provider', NEW.units, 0),
        iif(NEW.role = 'caller', NEW.units, 0),
        NEW.recorded_at
    )
    ON CONFLICT (peer) DO UPDATE SET
        served_units = served_units + excluded.served_units,
        consumed_units = consumed_units + excluded.consumed_units,
        updated_at = excluded.updated_at;
END;
""",
}

_SCHEMA: Final = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE receipts (
    provider TEXT NOT NULL,
    caller TEXT NOT NULL,
    seq INTEGER NOT NULL CHECK (seq >= 1),
    role TEXT NOT NULL CHECK (role IN ('provider', 'caller')),
    model_id TEXT NOT NULL,
    units INTEGER NOT NULL CHECK (units >= 0),
    receipt_hash BLOB NOT NULL CHECK (length(receipt_hash) = 32),
    prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32),
    issued_at INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (provider, caller, seq)
) WITHOUT ROWID;
CREATE INDEX receipts_by_caller ON receipts (caller, provider, seq);
CREATE TABLE acknowledgements (
    caller TEXT NOT NULL,
    provider TEXT NOT NULL,
    seq INTEGER NOT NULL CHECK (seq >= 1),
    total_units INTEGER NOT NULL CHECK (total_units >= 0),
    last_receipt_hash BLOB NOT NULL CHECK (length(last_receipt_hash) = 32),
    envelope BLOB NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (provider, caller, seq)
) WITHOUT ROWID;
CREATE TABLE balances (
    peer TEXT PRIMARY KEY,
    served_units INTEGER NOT NULL DEFAULT 0,
    consumed_units INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
"""
_TABLES: Final = ("acknowledgements", "balances", "meta", "receipts")
_KIND: Final = FileKind(
    noun="ledger",
    error=LedgerError,
    application_id=APPLICATION_ID,
    schema_version=SCHEMA_VERSION,
    tables=_TABLES,
    start_anew="a new ledger",
)


def default_ledger_path(peer_id: str) -> Path:
    """The ledger of the peer ``peer_id``: ``ledger/<peer-id>.sqlite3`` in the data
    directory (one file per identity: several peers may run on one machine)."""
    return data_dir() / "ledger" / f"{peer_id}.sqlite3"


@dataclass(frozen=True, slots=True)
class StoredReceipt:
    """A usage receipt as the ledger keeps it: the fields it indexes and checks, and the
    signed envelope they came from (the provider's signature over the receipt's
    canonical encoding; ``receipt_hash`` is SHA-256 of that encoding). Units are
    micro-units; ``issued_at`` is unix milliseconds; ``prev_hash`` is ``ZERO_HASH`` for
    ``seq`` 1."""

    provider: str
    caller: str
    model_id: str
    seq: int
    units: int
    receipt_hash: bytes
    prev_hash: bytes
    issued_at: int
    envelope: bytes

    @property
    def pair(self) -> tuple[str, str]:
        return (self.provider, self.caller)


@dataclass(frozen=True, slots=True)
class StoredAcknowledgement:
    """The caller's signed acknowledgement of a pair's running total: the receipts up
    to ``seq`` (the last of them ``last_receipt_hash``) add up to ``total_units``."""

    caller: str
    provider: str
    seq: int
    total_units: int
    last_receipt_hash: bytes
    envelope: bytes

    @property
    def pair(self) -> tuple[str, str]:
        return (self.provider, self.caller)


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last receipt held of a pair: where its chain continues (``seq`` + 1, linking
    to ``receipt_hash``). ``seq`` 0 and ``ZERO_HASH`` when none is held."""

    seq: int
    receipt_hash: bytes


@dataclass(frozen=True, slots=True)
class PeerBalance:
    """This peer's standing with another, in micro-units: ``served`` to it (as
    provider), ``consumed`` from it (as caller); ``balance`` = served - consumed
    (positive: the other owes this peer). ``updated_at``: unix ms of the last change."""

    peer: str
    served: int
    consumed: int
    updated_at: int

    @property
    def balance(self) -> int:
        return self.served - self.consumed


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    """Sums over the whole ledger, in micro-units and counts."""

    served_units: int
    consumed_units: int
    receipts_as_provider: int
    receipts_as_caller: int
    acknowledgements: int
    peers: int


class Ledger(SqliteStore):
    """One peer's ledger file. Open it with ``Ledger.open``; every method is safe to
    call from several threads (one connection behind a lock), and a write returns only
    after its transaction is committed and synced.

    Raises (every method): LedgerError naming the file when SQLite reports it corrupt,
    full or unwritable.
    """

    kind = _KIND

    def __init__(
        self, path: Path, connection: sqlite3.Connection, clock: Callable[[], float]
    ) -> None:
        super().__init__(path, connection)
        self._clock = clock
        self._known_owner: str | None = None  # once read: an owner is never changed

    # --- opening ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        create: bool = True,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        synchronous: Synchronous = "FULL",
    ) -> Ledger:
        """Open the ledger at ``path``, creating it (mode 0600, its directory 0700) if
        ``create`` and it does not exist.

        owner: this peer's ID; stored when the file is created, and checked against the
            stored one when it is opened (a ledger holds one peer's view).
        clock: unix time in seconds, for ``recorded_at`` and ``updated_at``.
        synchronous: "FULL" (the default; see the module docstring) or "NORMAL".

        Raises:
            LedgerError: no file and not ``create``; a file that is not an SQLite
                database, is another program's database, has a newer schema, belongs to
                another peer, or cannot be created or written (a read-only directory);
                the message names the file and what is wrong.
        """
        path = Path(path)
        db = connect(
            path,
            _KIND,
            create=create,
            absent="nothing has been recorded there yet",
            prepare=lambda db: _prepare(path, db, owner, clock, synchronous),
        )
        return cls(path, db, clock)

    @property
    def owner(self) -> str | None:
        """The peer ID this ledger belongs to, if it was given when it was created."""
        with self._locked() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()
        return str(row[0]) if row else None

    # --- writing ---------------------------------------------------------------------

    def record_receipt(self, receipt: StoredReceipt, *, role: Role) -> bool:
        """Keep ``receipt``, seen as ``role`` ("provider": this peer issued it;
        "caller": this peer received it), and move the other peer's balance by its
        units, in one transaction; return once it is committed. Returns False if the
        very same receipt was already held (nothing changes), True if it was added.

        Raises:
            LedgerConflictError: another receipt holds the same pair and sequence
                number, or the held predecessor (seq - 1) is not the one it links to,
                or it was recorded before in the other role.
            LedgerError: this ledger's owner is not the receipt's ``role``; bad fields.
        """
        _check_receipt_fields(receipt)
        if role not in ("provider", "caller"):
            raise LedgerError(f"role must be 'provider' or 'caller', not {role!r}")
        now = self._now_ms()
        with self._locked() as db:
            owner = self._known_owner or _owner(db)
            self._known_owner = owner
            me = receipt.provider if role == "provider" else receipt.caller
            if owner is not None and me != owner:
                raise LedgerError(
                    f"{self.path} is the ledger of {owner}, but this receipt's {role} is {me}"
                )
            try:
                # One statement, its own transaction: the triggers check the link and
                # move the balance (_TRIGGERS).
                db.execute(
                    "INSERT INTO receipts (provider, caller, seq, role, model_id, units, "
                    "receipt_hash, prev_hash, issued_at, envelope, recorded_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        receipt.provider,
                        receipt.caller,
                        receipt.seq,
                        role,
                        receipt.model_id,
                        receipt.units,
                        receipt.receipt_hash,
                        receipt.prev_hash,
                        receipt.issued_at,
                        receipt.envelope,
                        now,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                _explain_refused(self.path, db, receipt, role, exc)
                return False  # the very same receipt, held already
        return True

    def record_acknowledgement(self, ack: StoredAcknowledgement) -> bool:
        """Keep the caller's acknowledgement of a pair's running total; return once
        committed. False if the same one was already held. It is checked against the
        receipts held: the one at ``seq`` must be ``last_receipt_hash``, and if all of
        1..seq are held their units must add up to ``total_units`` (counted from the
        latest acknowledgement held before it: its total plus the receipts since, so
        the check costs the same however long the chain).

        Raises:
            LedgerConflictError: it contradicts an acknowledgement or receipts held.
            LedgerError: bad fields.
        """
        _check_hash(ack.last_receipt_hash, "last_receipt_hash")
        if ack.seq < 1 or ack.total_units < 0:
            raise LedgerError(f"acknowledgement with seq {ack.seq}, total {ack.total_units}")
        where = f"{self.path}: acknowledgement {ack.seq} of caller {ack.caller} to {ack.provider}"
        now = self._now_ms()
        with self._writing() as db:
            held = db.execute(
                "SELECT total_units, last_receipt_hash, envelope FROM acknowledgements "
                "WHERE provider = ? AND caller = ? AND seq = ?",
                (ack.provider, ack.caller, ack.seq),
            ).fetchone()
            if held is not None:
                if (held[0], bytes(held[1]), bytes(held[2])) == (
                    ack.total_units,
                    ack.last_receipt_hash,
                    ack.envelope,
                ):
                    return False
                raise LedgerConflictError(f"{where} is already held with other contents")
            # From the latest acknowledgement held before this one (its total was checked
            # when it was recorded), so that the check reads only the receipts since.
            since_seq, since_units = db.execute(
                "SELECT coalesce(max(seq), 0), coalesce(max(total_units), 0) "
                "FROM (SELECT seq, total_units FROM acknowledgements "
                "WHERE provider = ? AND caller = ? AND seq < ? ORDER BY seq DESC LIMIT 1)",
                (ack.provider, ack.caller, ack.seq),
            ).fetchone()
            count, units, at_seq = db.execute(
                "SELECT count(*), coalesce(sum(units), 0), "
                "max(CASE WHEN seq = ? THEN receipt_hash END) FROM receipts "
                "WHERE provider = ? AND caller = ? AND seq > ? AND seq <= ?",
                (ack.seq, ack.provider, ack.caller, since_seq, ack.seq),
            ).fetchone()
            units += since_units
            if at_seq is not None and bytes(at_seq) != ack.last_receipt_hash:
                raise LedgerConflictError(
                    f"{where} names receipt {ack.last_receipt_hash.hex()}, but the receipt "
                    f"held at that seq is {bytes(at_seq).hex()}"
                )
            if count == ack.seq - since_seq and units != ack.total_units:
                raise LedgerConflictError(
                    f"{where} acknowledges {ack.total_units} micro-units, but its "
                    f"receipts add up to {units}"
                )
            db.execute(
                "INSERT INTO acknowledgements (caller, provider, seq, total_units, "
                "last_receipt_hash, envelope, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    ack.caller,
                    ack.provider,
                    ack.seq,
                    ack.total_units,
                    ack.last_receipt_hash,
                    ack.envelope,
                    now,
                ),
            )
        return True

    # --- reading ---------------------------------------------------------------------

    def last(self, pair: tuple[str, str]) -> ChainHead:
        """The last receipt held of ``pair`` (provider, caller): a restarted provider
        continues its chain from there."""
        with self._locked() as db:
            row = db.execute(
                "SELECT seq, receipt_hash FROM receipts WHERE provider = ? AND caller = ? "
                "ORDER BY seq DESC LIMIT 1",
                pair,
            ).fetchone()
        return ChainHead(int(row[0]), bytes(row[1])) if row else ChainHead(0, ZERO_HASH)

    def last_acknowledgement(self, pair: tuple[str, str]) -> StoredAcknowledgement | None:
        """The latest acknowledgement held of ``pair`` (provider, caller), if any."""
        with self._locked() as db:
            row = db.execute(
                "SELECT caller, provider, seq, total_units, last_receipt_hash, envelope "
                "FROM acknowledgements WHERE provider = ? AND caller = ? "
                "ORDER BY seq DESC LIMIT 1",
                pair,
            ).fetchone()
        return _acknowledgement(row) if row else None

    def balance(self, peer: str) -> PeerBalance:
        """This peer's standing with ``peer`` (zeros if they never dealt)."""
        with self._locked() as db:
            row = db.execute(
                "SELECT peer, served_units, consumed_units, updated_at FROM balances "
                "WHERE peer = ?",
                (peer,),
            ).fetchone()
        return PeerBalance(*row) if row else PeerBalance(peer, 0, 0, 0)

    def peer_balances(self) -> list[PeerBalance]:
        """Every peer this one has dealt with, by peer ID."""
        with self._locked() as db:
            rows = db.execute(
                "SELECT peer, served_units, consumed_units, updated_at FROM balances ORDER BY peer"
            ).fetchall()
        return [PeerBalance(*row) for row in rows]

    def balances(self) -> dict[str, int]:
        """Net balance per peer, in micro-units (positive: the peer owes this one)."""
        return {b.peer: b.balance for b in self.peer_balances()}

    def receipts(self, peer: str | None = None, role: Role | None = None) -> list[StoredReceipt]:
        """The receipts held, by pair and sequence number: those with ``peer`` as
        provider or caller (None: all), seen in ``role`` (None: both)."""
        query = (
            "SELECT provider, caller, model_id, seq, units, receipt_hash, prev_hash, "
            "issued_at, envelope FROM receipts WHERE 1"
        )
        args: list[str] = []
        if peer is not None:
            query += " AND (provider = ? OR caller = ?)"
            args += [peer, peer]
        if role is not None:
            query += " AND role = ?"
            args.append(role)
        query += " ORDER BY provider, caller, seq"
        with self._locked() as db:
            rows = db.execute(query, args).fetchall()
        return [_receipt(row) for row in rows]

    def acknowledgements(self, peer: str | None = None) -> list[StoredAcknowledgement]:
        """The acknowledgements held, by pair and sequence number (those of ``peer``)."""
        query = (
            "SELECT caller, provider, seq, total_units, last_receipt_hash, envelope "
            "FROM acknowledgements"
        )
        args: tuple[str, ...] = ()
        if peer is not None:
            query += " WHERE provider = ? OR caller = ?"
            args = (peer, peer)
        with self._locked() as db:
            rows = db.execute(query + " ORDER BY provider, caller, seq", args).fetchall()
        return [_acknowledgement(row) for row in rows]

    def totals(self) -> LedgerTotals:
        """Sums over the whole ledger."""
        with self._locked() as db:
            served, consumed, peers = db.execute(
                "SELECT coalesce(sum(served_units), 0), coalesce(sum(consumed_units), 0), "
                "count(*) FROM balances"
            ).fetchone()
            counts = dict(
                db.execute("SELECT role, count(*) FROM receipts GROUP BY role").fetchall()
            )
            (acks,) = db.execute("SELECT count(*) FROM acknowledgements").fetchone()
        return LedgerTotals(
            served_units=served,
            consumed_units=consumed,
            receipts_as_provider=counts.get("provider", 0),
            receipts_as_caller=counts.get("caller", 0),
            acknowledgements=acks,
            peers=peers,
        )

    def audit(self) -> list[str]:
        """Every way the balances differ from the sums of the receipts (none: they
        agree), one line per peer, e.g. after a restart."""
        with self._locked() as db:
            derived = {
                peer: (served, consumed)
                for peer, served, consumed in db.execute(
                    "SELECT CASE role WHEN 'provider' THEN caller ELSE provider END AS peer, "
                    "sum(CASE role WHEN 'provider' THEN units ELSE 0 END), "
                    "sum(CASE role WHEN 'caller' THEN units ELSE 0 END) "
                    "FROM receipts GROUP BY peer"
                )
            }
            kept = {
                peer: (served, consumed)
                for peer, served, consumed in db.execute(
                    "SELECT peer, served_units, consumed_units FROM balances"
                )
            }
        problems = []
        for peer in sorted(derived.keys() | kept.keys()):
            want, have = derived.get(peer, (0, 0)), kept.get(peer, (0, 0))
            if want != have:
                problems.append(
                    f"{peer}: balance (served, consumed) {have}, receipts add up to {want}"
                )
        return problems

    def export(self, peer: str | None, fh: IO[str]) -> int:
        """Write the receipt log (p2pnet/ledger/receipt_log.py) of ``peer``'s pairs
        (None: every pair) to ``fh``; return the number of lines written."""
        from p2pnet.ledger.receipt_log import export_log

        return export_log(
            self.receipts(peer),
            self.acknowledgements(peer),
            fh,
            peer=peer,
            exported_at=self._now_ms(),
        )

    # --- internals -------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _prepare(
    path: Path,
    db: sqlite3.Connection,
    owner: str | None,
    clock: Callable[[], float],
    synchronous: Synchronous,
) -> None:
    """Check what the file is, create the schema in a new one, set the pragmas."""
    with sqlite_errors(path, _KIND):
        version = check_file(path, db, _KIND)
        if version is None:
            meta = {"created_at": str(int(clock()))}
            if owner is not None:
                meta["owner"] = owner
            statements = [st for st in _SCHEMA.split(";") if st.strip()]
            create_schema(path, db, _KIND, [*statements, *_TRIGGERS.values()], meta)
        else:
            _upgrade_schema(path, db, version)
        use_wal(path, db, _KIND, synchronous)
        if owner is not None:
            held = _owner(db)
            if held is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('owner', ?)", (owner,))
            elif held != owner:
                raise LedgerError(f"{path} is the ledger of peer {held}, not of {owner}")


def _upgrade_schema(path: Path, db: sqlite3.Connection, version: int) -> None:
    """Bring a ledger of an older schema up to this one (1 -> 2: the triggers), and check
    that one of this schema has its triggers."""
    triggers = {
        row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    }
    missing = [name for name in _TRIGGERS if name not in triggers]
    if version == SCHEMA_VERSION:
        if missing:
            raise LedgerError(
                f"{path} is a damaged p2pnet ledger: schema {version} without the "
                f"trigger(s) {', '.join(missing)}"
            )
        return
    try:
        db.execute("BEGIN IMMEDIATE")
        for name in missing:
            db.execute(_TRIGGERS[name])
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise LedgerError(unwritable(path, exc, _KIND)) from None


def _owner(db: sqlite3.Connection) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()
    return str(row[0]) if row else None


def _check_hash(value: bytes, name: str) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise LedgerError(f"{name} must be 32 bytes")


def _check_receipt_fields(receipt: StoredReceipt) -> None:
    _check_hash(receipt.receipt_hash, "receipt_hash")
    _check_hash(receipt.prev_hash, "prev_hash")
    if receipt.seq < 1:
        raise LedgerError(f"a receipt's seq starts at 1, not {receipt.seq}")
    if receipt.units < 0:
        raise LedgerError(f"a receipt's units are not negative ({receipt.units})")
    if receipt.seq == 1 and receipt.prev_hash != ZERO_HASH:
        raise LedgerConflictError("receipt 1 of a pair must link to the zero hash")


def _explain_refused(
    path: Path, db: sqlite3.Connection, receipt: StoredReceipt, role: Role, exc: Exception
) -> None:
    """Why the ledger refused to insert ``receipt``: return if the very same receipt is
    held (nothing to add); raise LedgerConflictError if another holds its place or it
    does not link to the one held before it, LedgerError otherwise."""
    held = db.execute(
        "SELECT receipt_hash, role FROM receipts WHERE provider = ? AND caller = ? AND seq = ?",
        (receipt.provider, receipt.caller, receipt.seq),
    ).fetchone()
    where = (
        f"{path}: receipt {receipt.seq} of provider {receipt.provider} to caller {receipt.caller}"
    )
    if held is not None:
        if bytes(held[0]) != receipt.receipt_hash:
            raise LedgerConflictError(
                f"{where} is already held with hash {bytes(held[0]).hex()}, "
                f"not {receipt.receipt_hash.hex()}"
            )
        if held[1] != role:
            raise LedgerConflictError(f"{where} is held as {held[1]}, not {role}")
        return
    before = db.execute(
        "SELECT receipt_hash FROM receipts WHERE provider = ? AND caller = ? AND seq = ?",
        (receipt.provider, receipt.caller, receipt.seq - 1),
    ).fetchone()
    if before is not None and bytes(before[0]) != receipt.prev_hash:
        raise LedgerConflictError(
            f"{where} links to {receipt.prev_hash.hex()}, but receipt {receipt.seq - 1} "
            f"held is {bytes(before[0]).hex()}"
        )
    raise LedgerError(f"{path}: a value the ledger does not accept: {exc}")


def _receipt(row: Any) -> StoredReceipt:
    provider, caller, model_id, seq, units, receipt_hash, prev_hash, issued_at, envelope = row
    return StoredReceipt(
        provider=str(provider),
        caller=str(caller),
        model_id=str(model_id),
        seq=int(seq),
        units=int(units),
        receipt_hash=bytes(receipt_hash),
        prev_hash=bytes(prev_hash),
        issued_at=int(issued_at),
        envelope=bytes(envelope),
    )


def _acknowledgement(row: Any) -> StoredAcknowledgement:
    caller, provider, seq, total_units, last_receipt_hash, envelope = row
    return StoredAcknowledgement(
        caller=str(caller),
        provider=str(provider),
        seq=int(seq),
        total_units=int(total_units),
        last_receipt_hash=bytes(last_receipt_hash),
        envelope=bytes(envelope),
    )
