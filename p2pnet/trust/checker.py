"""``SpotChecker``: re-runs a sample of this peer's calls elsewhere and acts on what the
comparison says (docs/security.md, "Spot checks").

After a call through the finder answered, ``consider`` decides (``Sampler``) whether to
check it. A checked call is re-run in the peer's nursery, after the result went back to
the user: by this peer itself if it serves the model, else by another provider of the
same model, one in another IP group first (``checker_order``). If the two results agree
(``compare_outputs``), that is the verdict. If not, a third opinion decides
(``odd_one_out``): the provider that disagrees with two who agree is marked untrusted,
and the finder skips it from then on. While no two results heard agree (two wrong
results, each its own, and a right one), one more provider is asked, up to
``MAX_OPINIONS`` results (``wants_another_opinion``). Every verdict goes to the
``TrustStore`` with the signed receipts of the results that differed.

``ReceiptKeeper`` sits between the invoke client and the accountant and keeps the last
receipts accepted, so that a verdict holds each provider's own signed commitment to the
result it returned.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import trio

from p2pnet.core.address import PeerAddress
from p2pnet.core.address_filter import ip_groups
from p2pnet.core.batching import is_batched_runtime
from p2pnet.core.receipts import Receipt, tensor_hash
from p2pnet.core.records import CapabilityRecord
from p2pnet.core.spot_check import (
    MAX_OPINIONS,
    Comparison,
    Sampler,
    SpotCheckPolicy,
    checker_order,
    compare_outputs,
    odd_one_out,
    wants_another_opinion,
)
from p2pnet.discovery.service import Offer
from p2pnet.errors import P2PNetError
from p2pnet.invoke.client import CallerAccounts
from p2pnet.invoke.local import Invokers
from p2pnet.runtime.served import ServedModel
from p2pnet.trust.store import Opinion, Outcome, StoredVerdict, TrustStore

__all__ = ["ReceiptKeeper", "SpotCheckStats", "SpotChecker"]

log = logging.getLogger(__name__)

# Receipts kept for a check that may follow: more than the calls in flight at once.
KEPT_RECEIPTS: Final = 256
# How a verdict names its results in the keys of its comparisons ("first-third").
ORDINALS: Final = ("first", "second", "third", "fourth", "fifth")
assert len(ORDINALS) >= MAX_OPINIONS


class ReceiptKeeper:
    """The caller's accounts (``Accountant``), also keeping the last ``keep`` receipts
    they accepted, by (provider, result hash)."""

    def __init__(self, accounts: CallerAccounts, keep: int = KEPT_RECEIPTS) -> None:
        self._accounts = accounts
        self._keep = keep
        self._kept: OrderedDict[tuple[str, bytes], tuple[bytes, str]] = OrderedDict()

    def acknowledgement_for(self, provider: str) -> bytes | None:
        return self._accounts.acknowledgement_for(provider)

    def asked_to_settle(self, provider: str) -> None:
        self._accounts.asked_to_settle(provider)

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
    ) -> object:
        receipt = self._accounts.accept(
            provider, model_id, inputs, outputs, envelope, wall_s=wall_s, record=record
        )
        if isinstance(receipt, Receipt):
            self._kept[(provider, receipt.result_hash)] = (envelope, receipt.runtime)
            if len(self._kept) > self._keep:
                self._kept.popitem(last=False)
        return receipt

    def receipt_for(self, provider: str, result_hash: bytes) -> tuple[bytes, str] | None:
        """The envelope and runtime fingerprint of ``provider``'s receipt for the result
        whose tensor hash is ``result_hash``, if still kept."""
        return self._kept.get((provider, result_hash))


@dataclass(slots=True)
class SpotCheckStats:
    """What the spot checker did since the peer started.

    considered: calls offered to it. sampled: those drawn for a check. skipped_busy:
    drawn while ``max_concurrent`` checks ran. no_checker: nobody else could re-run it.
    agreed, disagreed, unresolved: verdicts by outcome. marked: providers marked.
    checker_failures: re-runs that failed (the next candidate was asked).
    extra_calls: re-runs made, local ones included (the cost of checking).
    """

    considered: int = 0
    sampled: int = 0
    skipped_busy: int = 0
    no_checker: int = 0
    agreed: int = 0
    disagreed: int = 0
    unresolved: int = 0
    marked: int = 0
    checker_failures: int = 0
    extra_calls: int = 0

    @property
    def finished(self) -> int:
        """Checks that ended (with a verdict or for want of a checker)."""
        return self.agreed + self.disagreed + self.unresolved + self.no_checker


@dataclass(frozen=True, slots=True)
class _Heard:
    opinion: Opinion
    outputs: Mapping[str, npt.NDArray[Any]]
    groups: frozenset[str]


class SpotChecker:
    """Checks a sample of the calls this peer makes (see the module docstring).

    Args:
        invokers: reach this peer's own models and other peers.
        models: the models this peer serves (a check runs here when it serves the model).
        store: where verdicts and marks are kept.
        policy: rate, tolerances, concurrency, timeout, seed.
        nursery: where checks run, after the call returned.
        receipts: the receipts of the calls made (None: no accounts, no receipts).
        machine: this machine's runtime fingerprint part (``machine_fingerprint()``).
        rng: draws which calls to check (default: seeded by ``policy.seed``).
    """

    def __init__(
        self,
        invokers: Invokers,
        models: Mapping[str, ServedModel],
        store: TrustStore,
        policy: SpotCheckPolicy,
        nursery: trio.Nursery,
        *,
        receipts: ReceiptKeeper | None = None,
        machine: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.peer_id = invokers.local.peer_id
        self._invokers = invokers
        self._models = models
        self.store = store
        self.policy = policy
        self._nursery = nursery
        self._receipts = receipts
        self._machine = machine
        self._sampler = Sampler(policy.rate, rng or random.Random(policy.seed))
        self.stats = SpotCheckStats()
        self._running = 0
        self._changed = trio.Event()

    def is_untrusted(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is marked: the finder skips it."""
        return self.store.is_untrusted(peer_id)

    def consider(
        self,
        offer: Offer,
        offers: Sequence[Offer],
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
    ) -> bool:
        """After ``offer`` answered ``inputs`` with ``outputs`` (``offers``: the others
        found for the call), maybe start a check of it; True if one started. Returns at
        once: the check runs in the background, on copies of the tensors."""
        self.stats.considered += 1
        if offer.record.peer_id == self.peer_id or not self._sampler.should_check():
            return False
        self.stats.sampled += 1
        if self._running >= self.policy.max_concurrent:
            self.stats.skipped_busy += 1
            self._notify()
            return False
        sent = {name: np.array(value, copy=True) for name, value in inputs.items()}
        got = {name: np.array(value, copy=True) for name, value in outputs.items()}
        self._running += 1
        self._nursery.start_soon(self._run, offer, tuple(offers), sent, got)
        return True

    async def wait_until(self, finished: int) -> None:
        """Wait until ``stats.finished + stats.skipped_busy`` reaches ``finished`` (tests
        and benchmarks wait on it instead of sleeping)."""
        while self.stats.finished + self.stats.skipped_busy < finished:
            await self._changed.wait()

    async def wait_idle(self) -> None:
        """Wait until no check is running."""
        while self._running:
            await self._changed.wait()

    async def _run(
        self,
        offer: Offer,
        offers: tuple[Offer, ...],
        inputs: dict[str, npt.NDArray[Any]],
        outputs: dict[str, npt.NDArray[Any]],
    ) -> None:
        try:
            await self.check(offer, offers, inputs, outputs)
        except P2PNetError as exc:  # the store failed: say so, the peer goes on
            log.warning("a spot check of provider %s failed: %s", offer.record.peer_id, exc)
            self.stats.no_checker += 1
        finally:
            self._running -= 1
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def check(
        self,
        offer: Offer,
        offers: Sequence[Offer],
        inputs: Mapping[str, Any],
        outputs: Mapping[str, npt.NDArray[Any]],
    ) -> StoredVerdict | None:
        """Check now that ``offer``'s ``outputs`` for ``inputs`` hold up; the verdict
        kept, or None if nobody else could re-run the call.

        Raises:
            TrustStoreError: the verdict cannot be kept.
        """
        record = offer.record
        model_id = record.model_id
        tolerance = self.policy.tolerances.for_model(model_id)
        first = _Heard(
            self._remote_opinion(record.peer_id, outputs), outputs, ip_groups(offer.address.addrs)
        )
        candidates: list[Offer | None] = []  # None: this peer's own run
        if model_id in self._models:
            candidates.append(None)
        others = {
            o.record.peer_id: o
            for o in offers
            if o.record.model_id == model_id
            and o.record.peer_id not in (record.peer_id, self.peer_id)
            and not self.store.is_untrusted(o.record.peer_id)
        }
        second = await self._next_opinion(candidates, others, first.groups, model_id, inputs)
        if second is None:
            log.info("no other provider to check %s on model %s", record.peer_id, model_id)
            self.stats.no_checker += 1
            return None
        ab = self._compare(first, second, tolerance)
        if ab.agree:
            self.stats.agreed += 1
            # Agreement needs no evidence: the receipts are not kept with it.
            return self.store.record(
                model_id=model_id,
                outcome="agree",
                opinions=(_bare(first.opinion), _bare(second.opinion)),
                comparisons={"first-second": ab.to_dict()},
            )
        log.warning(
            "spot check: %s and %s disagree on model %s: %s",
            record.peer_id,
            second.opinion.peer,
            model_id,
            ab.detail,
        )
        comparisons = {"first-second": ab.to_dict()}
        heard = [first, second]
        agree = {(0, 1): False}
        while wants_another_opinion(agree, len(heard)):
            avoid = frozenset().union(*(h.groups for h in heard))
            further = await self._next_opinion(candidates, others, avoid, model_id, inputs)
            if further is None:
                break
            k = len(heard)
            for i, earlier in enumerate(heard):
                compared = self._compare(earlier, further, tolerance)
                agree[(i, k)] = compared.agree
                comparisons[f"{ORDINALS[i]}-{ORDINALS[k]}"] = compared.to_dict()
            heard.append(further)
        outcome: Outcome = "unresolved"
        marked = None
        odd = odd_one_out(agree, len(heard))
        if odd is not None:
            outcome = "disagree"
            if heard[odd].opinion.peer != self.peer_id:
                marked = heard[odd].opinion.peer
            else:
                log.warning("spot check: this peer's own run of %s is the odd one", model_id)
        if outcome == "disagree":
            self.stats.disagreed += 1
        else:
            self.stats.unresolved += 1
        if marked is not None:
            self.stats.marked += 1
            log.warning(
                "provider %s is marked untrusted: its result of %s differs", marked, model_id
            )
        return self.store.record(
            model_id=model_id,
            outcome=outcome,
            opinions=tuple(h.opinion for h in heard),
            comparisons=comparisons,
            marked=marked,
        )

    def _compare(self, a: _Heard, b: _Heard, tolerance: Any) -> Comparison:
        ra, rb = a.opinion.runtime, b.opinion.runtime
        # A batched model's results depend on its batches: within a tolerance only.
        bitwise = bool(ra) and ra == rb and not is_batched_runtime(ra)
        return compare_outputs(a.outputs, b.outputs, bitwise, tolerance)

    async def _next_opinion(
        self,
        candidates: list[Offer | None],
        others: dict[str, Offer],
        avoid: frozenset[str],
        model_id: str,
        inputs: Mapping[str, Any],
    ) -> _Heard | None:
        """The first opinion someone not yet asked gives: this peer's own run if it is in
        ``candidates``, else the providers of ``others`` in another IP group than
        ``avoid`` first. Whoever is asked is removed from both."""
        while candidates and candidates[0] is None:
            candidates.pop(0)
            heard = await self._local_opinion(model_id, inputs)
            if heard is not None:
                return heard
        order = checker_order(
            [(peer, ip_groups(o.address.addrs)) for peer, o in others.items()], avoid
        )
        for peer in order:
            offer = others.pop(peer)
            self.stats.extra_calls += 1
            try:
                with trio.fail_after(self.policy.timeout):
                    got = await self._invokers.to(peer).invoke(
                        offer.address,
                        model_id,
                        inputs,
                        timeout=self.policy.timeout,
                        record=offer.record,
                    )
            except (P2PNetError, trio.TooSlowError) as exc:
                log.info("spot check: provider %s could not re-run the call: %s", peer, exc)
                self.stats.checker_failures += 1
                continue
            return _Heard(self._remote_opinion(peer, got), got, ip_groups(offer.address.addrs))
        return None

    async def _local_opinion(self, model_id: str, inputs: Mapping[str, Any]) -> _Heard | None:
        served = self._models.get(model_id)
        if served is None:
            return None
        self.stats.extra_calls += 1
        try:
            got = await self._invokers.local.invoke(
                PeerAddress(self.peer_id, ()), model_id, inputs, timeout=self.policy.timeout
            )
        except P2PNetError as exc:
            log.info("spot check: this peer could not re-run %s: %s", model_id, exc)
            self.stats.checker_failures += 1
            return None
        # The fingerprint this peer's receipts would carry for the run.
        runtime = f"{served.info.runtime}; {self._machine}" if self._machine else ""
        return _Heard(Opinion(self.peer_id, tensor_hash(got), runtime[:128]), got, frozenset())

    def _remote_opinion(self, peer: str, outputs: Mapping[str, Any]) -> Opinion:
        result_hash = tensor_hash(outputs)
        kept = self._receipts.receipt_for(peer, result_hash) if self._receipts else None
        if kept is None:
            return Opinion(peer, result_hash, "")
        envelope, runtime = kept
        return Opinion(peer, result_hash, runtime, envelope)


def _bare(opinion: Opinion) -> Opinion:
    return Opinion(opinion.peer, opinion.result_hash, opinion.runtime)
