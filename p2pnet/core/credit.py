"""Per-peer credit: bilateral balances, a free allowance, thresholds, admission order.

A ``CreditLedger`` holds one balance per peer, in micro-units (``core/pricing.py``):
positive, the peer owes this node (it was served); negative, this node owes the peer
(the peer served it). Serving each other nets out: that is settlement in kind. Time is
an argument (``now``, seconds on one clock); nothing here reads a clock or does I/O, and
decisions are returned: the invoke server refuses, asks to settle, or orders its queue.

The rules (as Ethereum Swarm's SWAP, without its cheques and chain):

- Allowance: a balance moves toward zero by ``allowance_rate`` micro-units per second,
  debts owed to this node and debts it owes alike (so two peers with the same policy
  see mirror images). Forgiveness never crosses zero: it never creates credit.
- Soft threshold: a charge that leaves the peer owing more than ``soft_threshold`` is
  admitted with a request to settle.
- Hard threshold (1.25 x soft, as Swarm's disconnect threshold): a charge that would
  leave the peer owing more than ``hard_threshold`` is refused (``CreditExceededError``:
  balance, limit, and when the allowance will have made room).
- Messages that reduce a debt (``settle``, ``earn``) are always accepted.

So a peer that never serves nor settles gets at most ``allowance_rate * elapsed +
hard_threshold`` of service over any span of ``elapsed`` seconds from one provider
that charges before serving (``charge``); the tests prove it as a property. A provider
that only learns a call's units after the run (``charge_served``) checks first with the
part it knows (``check``: the per-call and request bytes) and may overshoot by that one
call's remaining cost.

Admission (GNUnet's excess-based economy): an idle provider serves everyone in arrival
order; under load, ``admission_order`` puts the caller with the best standing (what
this node owes it) first, ties in arrival order.

Defaults (``CreditPolicy()``), at ``REFERENCE_PRICE`` (one unit ~ one CPU second; an iris
call 1,001 micro-units):

- ``allowance_rate`` 10,000 micro-units per second: 1% of one core per caller, about 10
  iris calls a second (600 a minute) free for ever; a hundred free riders at full
  allowance together take one core, and under load they are served after contributors.
- ``soft_threshold`` 10,000,000 (10 units): ten CPU seconds, or about 10,000 iris calls,
  of credit for a caller never seen; it must exceed the largest single call many times
  over, or that call is refused for ever (Swarm can use 3 seconds of allowance because
  its chunks are tiny; a model call can cost seconds). The allowance drains it in 1,000 s.
- ``hard_threshold`` 12,500,000: 1.25 x soft, as Swarm.

A new identity is free to make, so each one starts with the hard threshold of credit:
credit limits what a free rider takes per identity and per second of allowance, and
admission under load is what keeps contributors served (docs/incentives.md).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final, TypeVar

from p2pnet.errors import CreditExceededError

__all__ = [
    "DEFAULT_CREDIT_POLICY",
    "ChargeDecision",
    "ChargeOutcome",
    "CreditLedger",
    "CreditPolicy",
    "admission_order",
]


def _check_micro_units(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 of micro-units, got {value!r}")


@dataclass(frozen=True, slots=True)
class CreditPolicy:
    """A provider's credit rules; every amount in micro-units (defaults: module docstring).

    allowance_rate: micro-units of any balance forgiven per second.
    soft_threshold: owing more than this, a caller is asked to settle.
    hard_threshold: a charge that would leave a caller owing more is refused.

    Raises:
        ValueError: an amount that is not an int >= 0, or hard below soft.
    """

    allowance_rate: int = 10_000
    soft_threshold: int = 10_000_000
    hard_threshold: int = 12_500_000

    def __post_init__(self) -> None:
        _check_micro_units("allowance_rate", self.allowance_rate)
        _check_micro_units("soft_threshold", self.soft_threshold)
        _check_micro_units("hard_threshold", self.hard_threshold)
        if self.hard_threshold < self.soft_threshold:
            raise ValueError(
                f"hard_threshold ({self.hard_threshold}) must be at least soft_threshold "
                f"({self.soft_threshold})"
            )

    @classmethod
    def from_soft_threshold(cls, soft_threshold: int, allowance_rate: int = 10_000) -> CreditPolicy:
        """The policy with the hard threshold at 1.25 x ``soft_threshold`` (rounded down).

        Raises:
            ValueError: an amount that is not an int >= 0.
        """
        _check_micro_units("soft_threshold", soft_threshold)
        return cls(allowance_rate, soft_threshold, soft_threshold * 5 // 4)


DEFAULT_CREDIT_POLICY: Final = CreditPolicy()


class ChargeOutcome(enum.Enum):
    """What to do with a charged call."""

    ADMITTED = "admitted"
    SETTLE_REQUESTED = "settle_requested"  # admitted; the caller owes over the soft threshold
    REFUSED = "refused"  # over the hard threshold: nothing was charged


@dataclass(frozen=True, slots=True)
class ChargeDecision:
    """The answer to a charge.

    balance: what the peer owes after the charge (if refused: what it owes now).
    retry_after: if refused, seconds until the allowance makes room for the same
        charge (rounded up to the millisecond); None if it never will (no allowance,
        or the charge alone is over the hard threshold). None if admitted.
    """

    outcome: ChargeOutcome
    peer: str
    units: int
    balance: int
    soft_threshold: int
    hard_threshold: int
    retry_after: float | None = None

    @property
    def admitted(self) -> bool:
        """Whether the call may be served."""
        return self.outcome is not ChargeOutcome.REFUSED

    def error(self) -> CreditExceededError:
        """The error a refused call is answered with (the caller receives its message)."""
        if self.retry_after is None:
            when = (
                "the call alone costs more than the limit"
                if self.units > self.hard_threshold
                else "this provider forgives no debt: settle by serving it"
            )
        else:
            when = f"the allowance makes room for this call in {self.retry_after:.3f} s"
        return CreditExceededError(
            f"credit exceeded: this caller owes {self.balance} micro-units, this call costs "
            f"{self.units}, the limit is {self.hard_threshold}; {when}",
            balance=self.balance,
            limit=self.hard_threshold,
            retry_after=self.retry_after,
        )


# Times are kept as integers of 2**-64 seconds, so that the allowance is computed in
# exact integer arithmetic: every float clock reading of at least 2**-12 seconds is a
# whole number of these (a float's last bit is worth at least 2**-64 s from there on);
# finer readings are rounded down. (Exact Fractions did the same ~10x slower.)
_TIME_BITS: Final = 64
_TIME_SCALE: Final = 1 << _TIME_BITS


def _ticks(now: float) -> int:
    """``now`` (seconds) in 2**-64 seconds, exactly when it is representable."""
    numerator, denominator = now.as_integer_ratio()
    if denominator <= _TIME_SCALE:
        return numerator * (_TIME_SCALE // denominator)
    return (numerator << _TIME_BITS) // denominator


@dataclass(slots=True)
class _Account:
    balance: int
    updated_at: int  # 2**-64 seconds (_ticks)
    # Allowance accrued but below one micro-unit, in 2**-64 micro-units, exact, so that
    # many small steps forgive exactly what one long step would.
    carry: int = 0


def _checked_ticks(now: float) -> int:
    """``now`` in ticks (``_ticks``), once it is checked to be finite."""
    if not math.isfinite(now):
        raise ValueError(f"now must be finite, got {now}")
    return _ticks(float(now))


def _check_units(units: int) -> None:
    if not isinstance(units, int) or isinstance(units, bool) or units < 0:
        raise ValueError(f"units must be an integer >= 0, got {units!r}")


class CreditLedger:
    """Balances per peer, with the allowance applied as time passes (module docstring).

    Only non-zero balances are kept, so memory grows with the peers in credit or debt.
    Times are seconds on one clock; a ``now`` earlier than a peer's last update
    forgives nothing (time never runs backwards here).
    """

    def __init__(self, policy: CreditPolicy = DEFAULT_CREDIT_POLICY) -> None:
        self.policy = policy
        self._accounts: dict[str, _Account] = {}

    def __len__(self) -> int:
        return len(self._accounts)

    def peers(self) -> list[str]:
        """The peers with a non-zero balance (as of their last update)."""
        return list(self._accounts)

    def _at(self, peer: str, now: float) -> _Account:
        """The peer's account as of ``now``; not stored."""
        ticks = _checked_ticks(now)
        account = self._accounts.get(peer)
        if account is None:
            return _Account(0, ticks)
        if ticks <= account.updated_at or account.balance == 0:
            return _Account(account.balance, max(ticks, account.updated_at), account.carry)
        accrued = self.policy.allowance_rate * (ticks - account.updated_at) + account.carry
        forgiven = accrued >> _TIME_BITS
        if forgiven >= abs(account.balance):
            return _Account(0, ticks)
        step = forgiven if account.balance > 0 else -forgiven
        return _Account(account.balance - step, ticks, accrued - (forgiven << _TIME_BITS))

    def _store(self, peer: str, account: _Account) -> None:
        if account.balance == 0:
            self._accounts.pop(peer, None)
        else:
            self._accounts[peer] = account

    def balance(self, peer: str, now: float) -> int:
        """What ``peer`` owes this node at ``now`` (negative: what this node owes it).

        Raises:
            ValueError: ``now`` not finite.
        """
        return self._at(peer, now).balance

    def standing(self, peer: str, now: float) -> int:
        """How well ``peer`` stands with this node: what this node owes it (minus what
        it owes). Higher is better; a peer never seen stands at 0."""
        return -self.balance(peer, now)

    def check(self, peer: str, units: int, now: float) -> ChargeDecision:
        """What ``charge(peer, units, now)`` would decide, charging nothing.

        Raises:
            ValueError: ``units`` not an int >= 0, or ``now`` not finite.
        """
        _check_units(units)
        account = self._at(peer, now)
        policy = self.policy
        after = account.balance + units
        if after > policy.hard_threshold:
            return ChargeDecision(
                ChargeOutcome.REFUSED,
                peer,
                units,
                account.balance,
                policy.soft_threshold,
                policy.hard_threshold,
                self._retry_after(account, units),
            )
        outcome = (
            ChargeOutcome.SETTLE_REQUESTED
            if after > policy.soft_threshold
            else ChargeOutcome.ADMITTED
        )
        return ChargeDecision(
            outcome, peer, units, after, policy.soft_threshold, policy.hard_threshold
        )

    def _retry_after(self, account: _Account, units: int) -> float | None:
        rate = self.policy.allowance_rate
        if rate == 0 or units > self.policy.hard_threshold:
            return None
        # The balance must fall by `excess`; the allowance forgives floor(rate*t + carry).
        excess = account.balance + units - self.policy.hard_threshold
        seconds = (excess - Fraction(account.carry, _TIME_SCALE)) / rate
        return math.ceil(seconds * 1000) / 1000

    def charge(self, peer: str, units: int, now: float) -> ChargeDecision:
        """Charge ``peer`` for a call of ``units`` before serving it: admitted (maybe
        with a request to settle) and recorded, or refused and nothing recorded.

        Raises:
            ValueError: ``units`` not an int >= 0, or ``now`` not finite.
        """
        decision = self.check(peer, units, now)
        if decision.admitted:
            account = self._at(peer, now)
            account.balance = decision.balance
            self._store(peer, account)
        return decision

    def charge_served(self, peer: str, units: int, now: float) -> ChargeDecision:
        """Record ``units`` of a call already served, even past the hard threshold; the
        decision says whether the peer should now settle (REFUSED: it owes more than the
        hard threshold, and its next call will be refused).

        Raises:
            ValueError: ``units`` not an int >= 0, or ``now`` not finite.
        """
        _check_units(units)
        account = self._at(peer, now)
        account.balance += units
        self._store(peer, account)
        policy = self.policy
        if account.balance > policy.hard_threshold:
            outcome = ChargeOutcome.REFUSED
        elif account.balance > policy.soft_threshold:
            outcome = ChargeOutcome.SETTLE_REQUESTED
        else:
            outcome = ChargeOutcome.ADMITTED
        return ChargeDecision(
            outcome, peer, units, account.balance, policy.soft_threshold, policy.hard_threshold
        )

    def earn(self, peer: str, units: int, now: float) -> int:
        """``peer`` served this node ``units``: the balance goes down by as much (what
        the peer owed is paid off first, then this node owes it). Returns the balance.

        Raises:
            ValueError: ``units`` not an int >= 0, or ``now`` not finite.
        """
        _check_units(units)
        account = self._at(peer, now)
        account.balance -= units
        self._store(peer, account)
        return account.balance

    def settle(self, peer: str, units: int, now: float) -> int:
        """``peer`` settled ``units`` of its debt: always accepted, applied up to what it
        owes (a settlement is not a prepayment). Returns the units applied.

        Raises:
            ValueError: ``units`` not an int >= 0, or ``now`` not finite.
        """
        _check_units(units)
        account = self._at(peer, now)
        applied = min(units, max(account.balance, 0))
        account.balance -= applied
        self._store(peer, account)
        return applied

    def snapshot(self) -> dict[str, dict[str, int | float]]:
        """The balances as plain values, to persist: peer -> {"balance": micro-units,
        "updated_at": seconds}. Allowance accrued below one micro-unit is not kept."""
        return {
            peer: {"balance": account.balance, "updated_at": account.updated_at / _TIME_SCALE}
            for peer, account in self._accounts.items()
        }

    @classmethod
    def restore(
        cls, snapshot: Mapping[str, Any], policy: CreditPolicy = DEFAULT_CREDIT_POLICY
    ) -> CreditLedger:
        """A ledger holding the balances of ``snapshot()`` output.

        Raises:
            ValueError: not a map of peer ID -> {"balance": int, "updated_at": number}.
        """
        ledger = cls(policy)
        if not isinstance(snapshot, Mapping):
            raise ValueError(f"credit snapshot must be a map, got {type(snapshot).__name__}")
        for peer, entry in snapshot.items():
            if not isinstance(peer, str) or not isinstance(entry, Mapping):
                raise ValueError("credit snapshot must map peer IDs to {balance, updated_at}")
            balance = entry.get("balance")
            updated_at = entry.get("updated_at")
            if not isinstance(balance, int) or isinstance(balance, bool):
                raise ValueError(f"credit snapshot: balance of {peer[:60]!r} is not an int")
            if (
                not isinstance(updated_at, int | float)
                or isinstance(updated_at, bool)
                or not math.isfinite(updated_at)
            ):
                raise ValueError(f"credit snapshot: updated_at of {peer[:60]!r} is not a time")
            ledger._store(peer, _Account(balance, _ticks(float(updated_at))))
        return ledger


Waiting = TypeVar("Waiting", bound=tuple[str, float])


def admission_order(
    waiting: Sequence[Waiting], now: float, ledger: CreditLedger, under_load: bool
) -> list[Waiting]:
    """The order in which to serve ``waiting`` calls, each (caller peer ID, arrived_at).

    Idle (``under_load`` False): first come, first served. Under load: the caller with
    the best standing first (``CreditLedger.standing``), ties first come first served.
    Equal arrival times keep the order of ``waiting``.

    Raises:
        ValueError: ``now`` not finite.
    """
    standing: dict[str, int] = {}
    if under_load:
        for peer, _ in waiting:
            if peer not in standing:
                standing[peer] = ledger.standing(peer, now)
    indexed = list(enumerate(waiting))
    if under_load:
        indexed.sort(key=lambda item: (-standing[item[1][0]], item[1][1], item[0]))
    else:
        indexed.sort(key=lambda item: (item[1][1], item[0]))
    return [call for _, call in indexed]
