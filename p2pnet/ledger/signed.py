"""Signed envelopes as the ledger stores them: each decoded and verified with
``p2pnet.core.receipts`` (signature by the key its signer's peer ID names), then turned
into the plain rows of ``store.py``. ``verify_log`` takes these as its checks, and
anything that records a received envelope goes through them first.
"""

from __future__ import annotations

from p2pnet.core.receipts import (
    Acknowledgement,
    Receipt,
    receipt_hash,
    verify_acknowledgement,
    verify_receipt,
)
from p2pnet.ledger.store import StoredAcknowledgement, StoredReceipt

__all__ = ["acknowledgement_form", "stored_acknowledgement", "stored_form", "stored_receipt"]


def stored_receipt(envelope: bytes) -> StoredReceipt:
    """The ledger row of a signed receipt envelope, once it verifies.

    Raises:
        MalformedReceiptError, ForgedReceiptError: as ``verify_receipt``.
    """
    return stored_form(verify_receipt(envelope), envelope)


def stored_form(receipt: Receipt, envelope: bytes) -> StoredReceipt:
    """The ledger row of ``receipt``, whose signed envelope is ``envelope`` (already
    verified, or signed here)."""
    return StoredReceipt(
        provider=receipt.provider,
        caller=receipt.caller,
        model_id=receipt.model_id,
        seq=receipt.seq,
        units=receipt.units,
        receipt_hash=receipt_hash(receipt),
        prev_hash=receipt.prev_hash,
        issued_at=receipt.issued_at,
        envelope=envelope,
    )


def stored_acknowledgement(envelope: bytes) -> StoredAcknowledgement:
    """The ledger row of a signed acknowledgement envelope, once it verifies.

    Raises:
        MalformedReceiptError, ForgedReceiptError: as ``verify_acknowledgement``.
    """
    return acknowledgement_form(verify_acknowledgement(envelope), envelope)


def acknowledgement_form(ack: Acknowledgement, envelope: bytes) -> StoredAcknowledgement:
    """The ledger row of ``ack``, whose signed envelope is ``envelope`` (verified)."""
    return StoredAcknowledgement(
        caller=ack.caller,
        provider=ack.provider,
        seq=ack.seq,
        total_units=ack.total_units,
        last_receipt_hash=ack.last_receipt_hash,
        envelope=envelope,
    )
