"""What a call costs and who owes whom, for one peer in both roles (docs/incentives.md).

As a provider, ``Accountant`` admits a call only if the caller's credit allows it
(``p2pnet.core.credit``), then signs a usage receipt for the result (its units from the
model's price, ``p2pnet.core.pricing``; the next link of the pair's chain) and stores it
in the ledger before the result leaves. As a caller, it verifies a provider's receipt
against the call it made (hashes of what it sent and received, the record and price it
called under) and stores it before the outputs are returned; every ``ack_every_calls``
calls it signs an acknowledgement of the pair's running total, which travels with the
next call. Serving each other nets out: what this peer consumed from a provider counts
as credit that provider has here.

Ledger writes are synchronous (SQLite, WAL): the invoke server and client call these
methods from the event loop, and with ``synchronous=NORMAL`` a commit takes tens of
microseconds (scripts/bench/ledger.py). Time is passed in as clocks.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from p2pnet.core.credit import (
    DEFAULT_CREDIT_POLICY,
    ChargeOutcome,
    CreditLedger,
    CreditPolicy,
)
from p2pnet.core.identity import Identity
from p2pnet.core.pricing import FREE, Price, Usage, max_units, tensor_bytes, units_for
from p2pnet.core.receipts import (
    Receipt,
    ReceiptChain,
    Signer,
    acknowledgement_due,
    check_receipt_for_call,
    sign_acknowledgement,
    sign_receipt,
    tensor_hash,
    verify_acknowledgement,
    verify_receipt,
)
from p2pnet.core.records import CapabilityRecord, encode_record
from p2pnet.errors import LedgerConflictError, ReceiptChainError, ReplayedReceiptError
from p2pnet.ledger import Ledger
from p2pnet.ledger.signed import acknowledgement_form, stored_form

__all__ = [
    "DEFAULT_ACCOUNTING",
    "Accountant",
    "AccountingConfig",
    "Admission",
    "Issued",
    "machine_fingerprint",
    "record_hash",
]

# A receipt's runtime field holds at most 128 bytes; fingerprints are ASCII.
MAX_RUNTIME_CHARS = 128
# The widest vector instruction set first: what decides how fast (and how exactly) a
# model's floating point runs here.
_ISAS = ("avx512f", "avx2", "avx", "sse4_2", "neon", "asimd")


def machine_fingerprint(cpuinfo: str | None = None) -> str:
    """This machine's part of a runtime fingerprint: architecture, widest vector
    instruction set, CPU count, e.g. "x86_64 avx2; 2 cpus". ``cpuinfo``: the text of
    /proc/cpuinfo (read here when None; absent on other systems)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    isa = next((f for f in _ISAS if f in flags), "")
    arch = platform.machine() or "unknown"
    return f"{arch}{' ' + isa if isa else ''}; {os.cpu_count() or 1} cpus"


@functools.lru_cache(maxsize=1024)
def record_hash(record: CapabilityRecord) -> bytes:
    """What a receipt names as the record it was served under: SHA-256 of the record's
    canonical payload (the bytes its signature covers). Records are frozen: cached."""
    return hashlib.sha256(encode_record(record)).digest()


@dataclass(frozen=True, slots=True)
class AccountingConfig:
    """How a peer accounts for calls.

    credit: allowance, soft and hard thresholds of what callers may owe this peer.
    ack_every_calls: a caller acknowledges its running total with a provider every this
        many calls (0: never).
    ack_every_units: ... or once this many micro-units accrued since the last (0: never).
    runtime_threads: threads a provider's run may use, as a caller assumes when it
        bounds the CPU part of a charge (wall time x threads).
    """

    credit: CreditPolicy = DEFAULT_CREDIT_POLICY
    ack_every_calls: int = 16
    ack_every_units: int = 1_000_000
    runtime_threads: int = 2


DEFAULT_ACCOUNTING: Final = AccountingConfig()
# This peer's own calls stand above every other caller's.
OWN_STANDING: Final = 1 << 62


@dataclass(frozen=True, slots=True)
class Admission:
    """A call let in: ``held``, the known cost it holds of the caller's credit until it
    ends; ``priority``, the caller's standing, which orders it under load."""

    held: int
    priority: int


@dataclass(frozen=True, slots=True)
class Issued:
    """A call's receipt (None for this peer's own calls) and whether its result asks the
    caller to settle."""

    envelope: bytes | None
    settle: bool


@dataclass
class _Pair:
    """A chain of receipts as this peer last stored it, and what accrued since the last
    acknowledgement."""

    chain: ReceiptChain
    calls_since_ack: int = 0
    units_since_ack: int = 0
    settle_asked: bool = False  # the provider asked for an acknowledgement


@dataclass
class AccountingStats:
    """Counts for status output and tests."""

    receipts_issued: int = 0
    receipts_accepted: int = 0
    acknowledgements_sent: int = 0
    acknowledgements_received: int = 0
    refused_for_credit: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Accountant:
    """One peer's accounts with every other peer, as provider and as caller.

    Args:
        identity: this peer's key (signs its receipts and acknowledgements).
        ledger: where receipts and acknowledgements are kept (opened by the owner).
        price_of: the price of a model this peer serves.
        record_of: the record a served model is published under (what receipts name).
        machine: this machine's part of the runtime fingerprint receipts carry (after
            the model's runtime, e.g. "onnxruntime/1.20.1"): ``machine_fingerprint()``.
        config: credit policy and acknowledgement rhythm.
        clock: monotonic seconds (credit's forgiveness); wall_clock: unix seconds.
    """

    def __init__(
        self,
        identity: Identity,
        ledger: Ledger,
        *,
        price_of: Callable[[str], Price],
        record_of: Callable[[str], CapabilityRecord],
        machine: str,
        config: AccountingConfig = DEFAULT_ACCOUNTING,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.peer_id = identity.peer_id
        self._key = Signer.of(identity.signing_key)
        self.ledger = ledger
        self._price_of = price_of
        self._record_of = record_of
        self._machine = machine
        self.config = config
        self._clock = clock
        self._wall_clock = wall_clock
        self.credit = CreditLedger(config.credit)
        self.stats = AccountingStats()
        self._pairs: dict[tuple[str, str], _Pair] = {}
        # Known cost of each caller's calls admitted and not yet finished: calls queued
        # together must not each find the same room in its credit.
        self._admitted: dict[str, int] = {}

    # --- as a provider -------------------------------------------------------------------

    def admit(self, caller: str, model_id: str, inputs: Mapping[str, Any]) -> Admission:
        """Admit a call of ``model_id`` by ``caller`` if its credit has room for what the
        call is known to cost before it runs (the per-call and input parts), on top of
        what its calls admitted and not yet finished are known to cost. The admission
        holds that known cost until ``issue`` or ``release``, and carries the caller's
        standing, the priority of its call under load.

        Raises:
            CreditExceededError: it owes too much; the message says how much, the limit
                and when the allowance will have made room.
        """
        if caller == self.peer_id:
            return Admission(0, OWN_STANDING)
        known = units_for(self._price_of(model_id), Usage(tensor_bytes(inputs), 0, 0.0))
        held = self._admitted.get(caller, 0)
        decision = self.credit.check(caller, held + known, self._clock())
        if not decision.admitted:
            self.stats.refused_for_credit += 1
            raise decision.error()
        self._admitted[caller] = held + known
        owes = decision.balance - held - known  # what the check found, before this call
        return Admission(known, self._standing(caller, owes))

    def release(self, caller: str, held: int) -> None:
        """Let go of what ``admit`` held for a call that ended without a result."""
        left = self._admitted.get(caller, 0) - held
        if left > 0:
            self._admitted[caller] = left
        else:
            self._admitted.pop(caller, None)

    def standing(self, caller: str) -> int:
        """``caller``'s standing here, in micro-units (see ``_standing``)."""
        if caller == self.peer_id:
            return OWN_STANDING
        return self._standing(caller, self.credit.balance(caller, self._clock()))

    def _standing(self, caller: str, owes: int) -> int:
        """The standing of ``caller``, which owes this peer ``owes``: what this peer owes
        it, less what it owes (higher is better). A caller that has left more than
        ``2 x ack_every_calls`` receipts unacknowledged is treated as one that does not
        settle: it stands last, below every caller within its credit."""
        every = self.config.ack_every_calls
        pair = self._pairs.get((self.peer_id, caller))
        if every and pair is not None and pair.calls_since_ack > 2 * every:
            return min(-owes, -self.config.credit.hard_threshold - 1)
        return -owes

    def issue(
        self,
        caller: str,
        model_id: str,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        run_s: float,
        held: int = 0,
    ) -> Issued:
        """The signed receipt for a call ``caller`` made, stored in the ledger and
        charged to the caller's credit before it is returned (none for this peer's own
        calls, which owe nothing); ``held``: what ``admit`` held for it, released here.
        ``settle``: the caller now owes more than the soft threshold, and its result asks
        it to acknowledge what it owes with its next call (as Swarm's SWAP asks for a
        cheque at the payment threshold)."""
        if caller == self.peer_id:
            return Issued(None, settle=False)
        self.release(caller, held)
        price = self._price_of(model_id)
        units = units_for(price, Usage(tensor_bytes(inputs), tensor_bytes(outputs), run_s))
        pair = self._pair(self.peer_id, caller)
        seq, prev = pair.chain.next_receipt_fields()
        record = self._record_of(model_id)
        receipt = Receipt(
            provider=self.peer_id,
            caller=caller,
            model_id=model_id,
            record_hash=record_hash(record),
            request_hash=tensor_hash(inputs),
            result_hash=tensor_hash(outputs),
            runtime=f"{record.runtime}; {self._machine}"[:MAX_RUNTIME_CHARS],
            units=units,
            seq=seq,
            prev_hash=prev,
            issued_at=int(self._wall_clock() * 1000),
        )
        envelope = sign_receipt(receipt, self._key)
        stored = stored_form(receipt, envelope)
        self.ledger.record_receipt(stored, role="provider")
        pair.chain = pair.chain.check_next(receipt, stored.receipt_hash)
        pair.calls_since_ack += 1  # receipts the caller has not acknowledged yet
        charged = self.credit.charge_served(caller, units, self._clock())
        self.stats.receipts_issued += 1
        return Issued(envelope, settle=charged.outcome is not ChargeOutcome.ADMITTED)

    def take_acknowledgement(self, caller: str, envelope: bytes) -> None:
        """Keep ``caller``'s signed acknowledgement of what it owes this peer.

        Raises:
            MalformedReceiptError, ForgedReceiptError, ForeignReceiptError: it does not
                verify, or is not ``caller``'s to this peer.
            LedgerConflictError: it does not match the receipts held.
        """
        ack = verify_acknowledgement(envelope, caller=caller, provider=self.peer_id)
        self.ledger.record_acknowledgement(acknowledgement_form(ack, envelope))
        pair = self._pair(self.peer_id, caller)
        pair.calls_since_ack = max(0, pair.chain.last_seq - ack.seq)
        self.stats.acknowledgements_received += 1

    # --- as a caller ---------------------------------------------------------------------

    def asked_to_settle(self, provider: str) -> None:
        """``provider`` asked for an acknowledgement: the next call to it carries one."""
        pair = self._pairs.get((provider, self.peer_id))
        if pair is not None:
            pair.settle_asked = True

    def acknowledgement_for(self, provider: str) -> bytes | None:
        """The signed acknowledgement to send ``provider`` with the next call, when one
        is due (``AccountingConfig``) or the provider asked to settle; None otherwise."""
        pair = self._pairs.get((provider, self.peer_id))
        if pair is None or pair.chain.last_seq == 0:
            return None
        config = self.config
        if not pair.settle_asked and not acknowledgement_due(
            pair.calls_since_ack,
            pair.units_since_ack,
            config.ack_every_calls,
            config.ack_every_units,
        ):
            return None
        envelope = sign_acknowledgement(pair.chain.acknowledgement(), self._key)
        pair.calls_since_ack = pair.units_since_ack = 0
        pair.settle_asked = False
        self.stats.acknowledgements_sent += 1
        return envelope

    def accept(
        self,
        provider: str,
        model_id: str,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        envelope: bytes,
        *,
        wall_s: float,
        record: CapabilityRecord | None = None,
    ) -> Receipt:
        """Check ``provider``'s receipt for the call this peer made (``inputs`` sent,
        ``outputs`` received, ``wall_s`` seconds from request to reply, under
        ``record`` when the caller knows it) and store it; return it.

        Raises:
            MalformedReceiptError, ForgedReceiptError, ForeignReceiptError: it does not
                verify, or is not for this call's pair.
            ReceiptMismatchError: it does not commit to this call (model, record,
                request, result), or charges more than the record's price allows.
            ReplayedReceiptError, ReceiptChainError: its place in the pair's chain is
                taken, or it does not link to the receipt held before it.
        """
        receipt = verify_receipt(envelope, provider=provider, caller=self.peer_id)
        price = record.price if record is not None else FREE
        ceiling = (
            max_units(
                price,
                tensor_bytes(inputs),
                tensor_bytes(outputs),
                wall_s,
                self.config.runtime_threads,
            )
            if record is not None
            else receipt.units  # no record known: nothing to hold the charge against
        )
        check_receipt_for_call(
            receipt,
            caller=self.peer_id,
            provider=provider,
            model_id=model_id,
            record_hash=record_hash(record) if record is not None else receipt.record_hash,
            request_hash=tensor_hash(inputs),
            result_hash=tensor_hash(outputs),
            max_units=ceiling,
        )
        pair = self._pair(provider, self.peer_id)
        # Replies to concurrent calls may arrive out of order: a receipt is accepted if
        # its place in the chain is free and it links to the one before it when that one
        # is held (the ledger checks both); the chain in memory follows the highest seq.
        stored = stored_form(receipt, envelope)
        try:
            added = self.ledger.record_receipt(stored, role="caller")
        except LedgerConflictError as exc:
            raise ReceiptChainError(str(exc), peer=provider) from None
        if not added:
            raise ReplayedReceiptError(
                f"provider {provider} sent receipt {receipt.seq} again, for another call",
                peer=provider,
            )
        if receipt.seq > pair.chain.last_seq:
            pair.chain = ReceiptChain(
                provider,
                self.peer_id,
                receipt.seq,
                stored.receipt_hash,
                pair.chain.total_units + receipt.units,
            )
        pair.calls_since_ack += 1
        pair.units_since_ack += receipt.units
        self.credit.earn(provider, receipt.units, self._clock())
        self.stats.receipts_accepted += 1
        return receipt

    # --- both ----------------------------------------------------------------------------

    def _pair(self, provider: str, caller: str) -> _Pair:
        """The pair's chain, continued from the ledger the first time (a restarted peer
        picks up where it stopped)."""
        pair = self._pairs.get((provider, caller))
        if pair is None:
            head = self.ledger.last((provider, caller))
            # The ledger keeps the pair's total with the other peer's balance: what this
            # peer served it (as provider) or consumed from it (as caller).
            if provider == self.peer_id:
                total = self.ledger.balance(caller).served
            else:
                total = self.ledger.balance(provider).consumed
            chain = ReceiptChain(provider, caller, head.seq, head.receipt_hash, total)
            pair = self._pairs[(provider, caller)] = _Pair(chain)
        return pair
