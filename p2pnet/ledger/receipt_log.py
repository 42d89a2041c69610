"""Receipt logs: a ledger's receipts and acknowledgements as JSON lines, to hand to
another party (``export_log``), and the checks anyone can run on one (``verify_log``).

A log is, one JSON object per line::

    {"p2pnet_receipt_log": 1, "peer": "12D3...", "exported_at": 1765000000000}
    {"type": "receipt", "provider": ..., "caller": ..., "model_id": ..., "seq": 1,
     "units": 1500, "receipt_hash": "<hex>", "prev_hash": "<hex>", "issued_at": ...,
     "envelope": "<hex>"}
    {"type": "acknowledgement", "caller": ..., "provider": ..., "seq": 1,
     "total_units": 1500, "last_receipt_hash": "<hex>", "envelope": "<hex>"}
    ...
    {"type": "end", "receipts": 2, "acknowledgements": 1, "units": 3000}

Each pair's receipts come in sequence order, from 1, and an acknowledgement comes right
after the receipt it covers. ``verify_log`` checks every chain link (seq 1 links to the
zero hash, each next one to its predecessor's hash), that no receipt is missing or
repeated, that each acknowledgement names the receipt before it and the running total
of its pair, and that the end line's counts match (a cut log has none, or wrong ones).
The signatures are checked by the ``check_receipt`` and ``check_acknowledgement``
functions it is given, which decode and verify one envelope; the fields the envelope
holds must equal those on its line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any, Final

from p2pnet.errors import LedgerError, P2PNetError
from p2pnet.ledger.store import ZERO_HASH, StoredAcknowledgement, StoredReceipt

__all__ = [
    "LOG_VERSION",
    "MAX_ENVELOPE_BYTES",
    "MAX_LINE_BYTES",
    "ReceiptLogSummary",
    "export_log",
    "receipt_fields",
    "verify_log",
]

LOG_VERSION: Final = 1
# Decoder limits: a receipt envelope is a few hundred bytes; a line holds its hex form.
MAX_ENVELOPE_BYTES: Final = 16 * 1024
MAX_LINE_BYTES: Final = 4 * MAX_ENVELOPE_BYTES

ReceiptCheck = Callable[[bytes], StoredReceipt]
AcknowledgementCheck = Callable[[bytes], StoredAcknowledgement]


def export_log(
    receipts: Iterable[StoredReceipt],
    acknowledgements: Iterable[StoredAcknowledgement],
    fh: IO[str],
    *,
    peer: str | None,
    exported_at: int,
) -> int:
    """Write a receipt log of ``receipts`` and ``acknowledgements`` (any order: they are
    sorted here) to ``fh``; return the number of lines. ``exported_at``: unix ms."""
    acks: dict[tuple[str, str, int], list[StoredAcknowledgement]] = {}
    for ack in acknowledgements:
        acks.setdefault((ack.provider, ack.caller, ack.seq), []).append(ack)
    lines = [{"p2pnet_receipt_log": LOG_VERSION, "peer": peer, "exported_at": exported_at}]
    count = units = n_acks = 0
    for r in sorted(receipts, key=lambda r: (r.provider, r.caller, r.seq)):
        lines.append(_receipt_json(r))
        count += 1
        units += r.units
        for ack in acks.get((r.provider, r.caller, r.seq), []):
            lines.append(_acknowledgement_json(ack))
            n_acks += 1
    lines.append({"type": "end", "receipts": count, "acknowledgements": n_acks, "units": units})
    for line in lines:
        fh.write(json.dumps(line, separators=(",", ":")) + "\n")
    return len(lines)


@dataclass
class _PairState:
    seq: int = 0
    last_hash: bytes = ZERO_HASH
    total_units: int = 0


@dataclass(frozen=True, slots=True)
class ReceiptLogSummary:
    """What a verified log holds. ``signatures_checked``: whether envelopes were
    checked (False: only the chain links and totals were)."""

    peer: str | None
    pairs: int
    receipts: int
    acknowledgements: int
    units: int
    signatures_checked: bool
    units_by_pair: dict[tuple[str, str], int] = field(default_factory=dict)


def verify_log(
    fh: IO[str],
    *,
    name: str,
    check_receipt: ReceiptCheck | None = None,
    check_acknowledgement: AcknowledgementCheck | None = None,
) -> ReceiptLogSummary:
    """Check the receipt log read from ``fh`` (``name``: the file, for messages).

    check_receipt, check_acknowledgement: decode and verify one signed envelope,
        raising a P2PNetError if it does not verify; None: envelopes are not checked.

    Raises:
        LedgerError: the first problem found, as "NAME line N: what is wrong"; a P2PNetError
            from a check is reported the same way, its message kept.
    """
    pairs: dict[tuple[str, str], _PairState] = {}
    receipts = acks = units = 0
    header: dict[str, Any] | None = None
    ended = False
    number = 0
    while True:
        text = fh.readline(MAX_LINE_BYTES + 1)
        if not text:
            break
        number += 1
        where = f"{name} line {number}"
        if len(text) > MAX_LINE_BYTES:
            raise LedgerError(f"{where}: longer than {MAX_LINE_BYTES} characters")
        if ended:
            raise LedgerError(f"{where}: a line after the end line")
        try:
            line = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep
            raise LedgerError(f"{where}: not JSON ({exc})") from None
        if not isinstance(line, dict):
            raise LedgerError(f"{where}: not a JSON object")
        if header is None:
            if line.get("p2pnet_receipt_log") != LOG_VERSION:
                raise LedgerError(
                    f"{where}: not a p2pnet receipt log of version {LOG_VERSION} "
                    "(the first line names the format)"
                )
            header = line
            continue
        kind = line.get("type")
        if kind == "receipt":
            receipt = _receipt_from(line, where)
            if check_receipt is not None:
                _matches(_checked(check_receipt, receipt.envelope, where), receipt, where)
            state = pairs.setdefault(receipt.pair, _PairState())
            if receipt.seq != state.seq + 1:
                missing = "repeated or out of order" if receipt.seq <= state.seq else "missing"
                raise LedgerError(
                    f"{where}: receipt {receipt.seq} of provider {receipt.provider} to "
                    f"caller {receipt.caller} follows receipt {state.seq}: receipts are "
                    f"{missing}"
                )
            if receipt.prev_hash != state.last_hash:
                raise LedgerError(
                    f"{where}: receipt {receipt.seq} links to {receipt.prev_hash.hex()}, "
                    f"but receipt {state.seq} is {state.last_hash.hex()}: broken chain"
                )
            state.seq, state.last_hash = receipt.seq, receipt.receipt_hash
            state.total_units += receipt.units
            receipts += 1
            units += receipt.units
        elif kind == "acknowledgement":
            ack = _acknowledgement_from(line, where)
            if check_acknowledgement is not None:
                _matches(_checked(check_acknowledgement, ack.envelope, where), ack, where)
            state = pairs.get(ack.pair, _PairState())
            if (ack.seq, ack.last_receipt_hash) != (state.seq, state.last_hash):
                raise LedgerError(
                    f"{where}: acknowledgement of receipt {ack.seq} "
                    f"({ack.last_receipt_hash.hex()}) does not follow that receipt"
                )
            if ack.total_units != state.total_units:
                raise LedgerError(
                    f"{where}: acknowledgement of receipt {ack.seq} states "
                    f"{ack.total_units} micro-units; the receipts up to it add up to "
                    f"{state.total_units}"
                )
            acks += 1
        elif kind == "end":
            stated = (line.get("receipts"), line.get("acknowledgements"), line.get("units"))
            if stated != (receipts, acks, units):
                raise LedgerError(
                    f"{where}: the end line states {stated[0]} receipts, {stated[1]} "
                    f"acknowledgements, {stated[2]} micro-units; the log holds {receipts}, "
                    f"{acks}, {units}"
                )
            ended = True
        else:
            raise LedgerError(f"{where}: unknown line type {kind!r}")
    if header is None:
        raise LedgerError(f"{name}: empty, not a receipt log")
    if not ended:
        raise LedgerError(f"{name}: no end line after line {number}: the log is cut short")
    peer = header.get("peer")
    return ReceiptLogSummary(
        peer=peer if isinstance(peer, str) else None,
        pairs=len(pairs),
        receipts=receipts,
        acknowledgements=acks,
        units=units,
        signatures_checked=check_receipt is not None,
        units_by_pair={pair: s.total_units for pair, s in pairs.items()},
    )


def receipt_fields(r: StoredReceipt) -> dict[str, Any]:
    """A stored receipt's fields as JSON values (hashes in hex), without its envelope:
    what a receipt log line and ``p2pnet ledger receipts --json`` show of it."""
    return {
        "provider": r.provider,
        "caller": r.caller,
        "model_id": r.model_id,
        "seq": r.seq,
        "units": r.units,
        "receipt_hash": r.receipt_hash.hex(),
        "prev_hash": r.prev_hash.hex(),
        "issued_at": r.issued_at,
    }


def _receipt_json(r: StoredReceipt) -> dict[str, Any]:
    return {"type": "receipt", **receipt_fields(r), "envelope": r.envelope.hex()}


def _acknowledgement_json(a: StoredAcknowledgement) -> dict[str, Any]:
    return {
        "type": "acknowledgement",
        "caller": a.caller,
        "provider": a.provider,
        "seq": a.seq,
        "total_units": a.total_units,
        "last_receipt_hash": a.last_receipt_hash.hex(),
        "envelope": a.envelope.hex(),
    }


def _text(line: dict[str, Any], key: str, where: str) -> str:
    value = line.get(key)
    if not isinstance(value, str) or not value:
        raise LedgerError(f"{where}: {key} must be a non-empty string")
    return value


def _count(line: dict[str, Any], key: str, where: str, minimum: int) -> int:
    value = line.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise LedgerError(f"{where}: {key} must be an integer of at least {minimum}")
    return value


def _hex(line: dict[str, Any], key: str, where: str, size: int | None) -> bytes:
    value = line.get(key)
    limit = size if size is not None else MAX_ENVELOPE_BYTES
    if not isinstance(value, str) or len(value) > 2 * limit:
        raise LedgerError(f"{where}: {key} must be hex of at most {limit} bytes")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise LedgerError(f"{where}: {key} is not hex") from None
    if size is not None and len(raw) != size:
        raise LedgerError(f"{where}: {key} must be {size} bytes, not {len(raw)}")
    return raw


def _receipt_from(line: dict[str, Any], where: str) -> StoredReceipt:
    return StoredReceipt(
        provider=_text(line, "provider", where),
        caller=_text(line, "caller", where),
        model_id=_text(line, "model_id", where),
        seq=_count(line, "seq", where, 1),
        units=_count(line, "units", where, 0),
        receipt_hash=_hex(line, "receipt_hash", where, 32),
        prev_hash=_hex(line, "prev_hash", where, 32),
        issued_at=_count(line, "issued_at", where, 0),
        envelope=_hex(line, "envelope", where, None),
    )


def _acknowledgement_from(line: dict[str, Any], where: str) -> StoredAcknowledgement:
    return StoredAcknowledgement(
        caller=_text(line, "caller", where),
        provider=_text(line, "provider", where),
        seq=_count(line, "seq", where, 1),
        total_units=_count(line, "total_units", where, 0),
        last_receipt_hash=_hex(line, "last_receipt_hash", where, 32),
        envelope=_hex(line, "envelope", where, None),
    )


def _checked(check: Callable[[bytes], Any], envelope: bytes, where: str) -> Any:
    try:
        return check(envelope)
    except P2PNetError as exc:
        raise LedgerError(f"{where}: the envelope does not verify: {exc}") from None


def _matches(decoded: object, stated: object, where: str) -> None:
    if decoded != stated:
        raise LedgerError(f"{where}: the fields on the line differ from those of its envelope")
