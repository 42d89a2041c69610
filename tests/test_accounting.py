"""Accounting between peers on the memory network: every result carries the provider's
signed receipt, stored by both sides before it counts; the caller checks it against the
call it made and the price it agreed to; credit refuses a caller that owes too much;
acknowledgements of running totals reach the provider; chains continue after a
restart; replies to concurrent calls may arrive in any order."""

from __future__ import annotations

import io
import os
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import trio
from memory_peers import memory_peer
from rich.console import Console
from rich.text import Text
from test_cli import start_peer
from test_pipeline import SPEC, arith, expected  # noqa: F401  (arith: a fixture)

from p2pnet import Peer
from p2pnet.accounting import AccountingConfig, machine_fingerprint
from p2pnet.cli.status import status_text
from p2pnet.config import CreditConfig, load_credit
from p2pnet.core.credit import CreditPolicy
from p2pnet.core.pricing import Price, Usage, units_for
from p2pnet.core.receipts import verify_receipt
from p2pnet.errors import (
    ConfigError,
    CreditExceededError,
    P2PNetError,
    ReceiptMismatchError,
    UnknownModelError,
)
from p2pnet.ledger import Ledger
from p2pnet.net.memory import MemoryNetwork
from p2pnet.pipeline import Pipeline
from p2pnet.status import PeerStatus, StatusFile

TASK = "iris-species"
X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
PRICE = Price(per_call=1_000, per_mb=10_000, per_cpu_s=0)


class Swarm:
    def __init__(self, stack: AsyncExitStack, network: MemoryNetwork, tmp: Path) -> None:
        self.stack, self.network, self.tmp = stack, network, tmp
        self.boot: Peer | None = None

    async def peer(self, name: str, **options: object) -> Peer:
        bootstrap = [self.boot.addrs[0]] if self.boot is not None else []
        peer = memory_peer(
            self.network, ledger=self.tmp / f"{name}.sqlite3", bootstrap=bootstrap, **options
        )
        started = await self.stack.enter_async_context(peer)
        if self.boot is None:
            self.boot = started
        return started


@asynccontextmanager
async def open_swarm(tmp: Path) -> AsyncIterator[Swarm]:
    """A memory network with a bootstrap peer; more peers join with ``swarm.peer``. (In
    the test's own task: peers hold nurseries, which a fixture's task cannot close.)"""
    async with AsyncExitStack() as stack:
        network = await stack.enter_async_context(MemoryNetwork(seed=5))
        swarm = Swarm(stack, network, tmp)
        await swarm.peer("boot")
        yield swarm


async def provider_and_caller(
    swarm: Swarm, models: dict[str, Path], price: Price = PRICE, **caller_options: object
) -> tuple[Peer, Peer]:
    provider = await swarm.peer("provider")
    provider.serve(models["iris"], tasks=[TASK], price=price)
    assert await provider.announce() > 0
    caller = await swarm.peer("caller", **caller_options)
    return provider, caller


def printed(text: Text) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(text)
    return console.export_text()


def ledger_of(peer: Peer) -> Ledger:
    accountant = peer.services.accountant
    assert accountant is not None
    return accountant.ledger


async def test_a_result_carries_a_receipt_both_sides_store(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    async with open_swarm(tmp_path) as swarm:
        provider, caller = await provider_and_caller(swarm, models)
        for _ in range(3):
            out = await caller.call({"x": X}, task=TASK)
            assert out["label"].tolist() == [0, 2]
        served = ledger_of(provider).receipts(peer=caller.peer_id, role="provider")
        consumed = ledger_of(caller).receipts(peer=provider.peer_id, role="caller")
        assert [r.seq for r in served] == [1, 2, 3]
        assert [r.receipt_hash for r in served] == [r.receipt_hash for r in consumed]
        # Units: per call plus per MB of tensors moved (16 float32 in, 2 int64 + 8 float32 out).
        receipt = verify_receipt(served[0].envelope, provider=provider.peer_id)
        expected = units_for(PRICE, Usage(X.nbytes, 2 * 8 + 8 * 4, 0.0))
        assert receipt.units == expected == 1_001
        assert (
            receipt.runtime.startswith("onnxruntime/") and machine_fingerprint() in receipt.runtime
        )
        assert ledger_of(provider).balances() == {caller.peer_id: 3 * expected}
        assert ledger_of(caller).balances() == {provider.peer_id: -3 * expected}
        assert ledger_of(provider).audit() == [] and ledger_of(caller).audit() == []
        # What p2pnet status shows, and the status file keeps.
        status = provider.status()
        assert status.ledger == str(ledger_of(provider).path)
        assert status.receipts == {"issued": 3, "accepted": 0, "refused_for_credit": 0}
        assert status.balances == {caller.peer_id: 3 * expected}
        assert PeerStatus.from_dict(status.to_dict()) == status
        text = printed(status_text(StatusFile(Path("s.json"), {"pid": 1}, status, False, 1.0)))
        assert f"{caller.peer_id} owes this peer 3,003 micro-units" in text
        assert "receipts issued 3, accepted 0; refused for credit 0" in text


async def test_a_receipt_that_overcharges_is_caught_and_the_outputs_withheld(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    async with open_swarm(tmp_path) as swarm:
        provider, caller = await provider_and_caller(swarm, models)
        accountant = provider.services.accountant
        assert accountant is not None
        # The provider charges ten times the price its signed record states.
        accountant._price_of = lambda model_id: Price(10_000, 100_000, 0)  # type: ignore[method-assign]
        with pytest.raises(ReceiptMismatchError, match="units") as caught:
            await caller.call({"x": X}, task=TASK)
        assert caught.value.peer == provider.peer_id
        assert ledger_of(caller).receipts() == []  # nothing counted against the caller


async def test_a_caller_that_owes_too_much_is_refused_with_its_balance(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    async with open_swarm(tmp_path) as swarm:
        policy = CreditPolicy(allowance_rate=0, soft_threshold=2_000, hard_threshold=2_500)
        provider = await swarm.peer("provider", accounting=AccountingConfig(credit=policy))
        provider.serve(models["iris"], tasks=[TASK], price=PRICE)
        await provider.announce()
        caller = await swarm.peer("caller")
        iris = next(iter(provider.models))
        await caller.invoke(provider.addrs[0], iris, {"x": X})  # owes 1,001
        await caller.invoke(provider.addrs[0], iris, {"x": X})  # owes 2,002
        with pytest.raises(CreditExceededError, match="owes") as caught:
            await caller.invoke(provider.addrs[0], iris, {"x": X})
        assert caught.value.peer == provider.peer_id
        assert "2002" in str(caught.value).replace(",", "")
        assert len(ledger_of(provider).receipts()) == 2  # the refused call cost nothing


async def test_acknowledgements_of_running_totals_reach_the_provider(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    async with open_swarm(tmp_path) as swarm:
        provider, caller = await provider_and_caller(
            swarm, models, accounting=AccountingConfig(ack_every_calls=2, ack_every_units=0)
        )
        iris = next(iter(provider.models))
        for _ in range(5):
            await caller.invoke(provider.addrs[0], iris, {"x": X})
        # Due after calls 2 and 4, each sent with the call after it.
        ack = ledger_of(provider).last_acknowledgement((provider.peer_id, caller.peer_id))
        assert ack is not None and ack.seq == 4
        held = ledger_of(provider).receipts(peer=caller.peer_id, role="provider")
        assert ack.total_units == sum(r.units for r in held[:4])
        assert ack.last_receipt_hash == held[3].receipt_hash


async def test_replies_to_concurrent_calls_are_accepted_in_any_order(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    async with open_swarm(tmp_path) as swarm:
        provider, caller = await provider_and_caller(swarm, models)
        iris = next(iter(provider.models))
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(lambda: caller.invoke(provider.addrs[0], iris, {"x": X}))
        consumed = ledger_of(caller).receipts(peer=provider.peer_id, role="caller")
        assert sorted(r.seq for r in consumed) == list(range(1, 13))
        assert ledger_of(caller).audit() == []


async def test_a_restarted_provider_continues_its_chains(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    async with MemoryNetwork(seed=6) as network:
        from p2pnet.net.identity import generate_identity

        identity = generate_identity()
        ledger = tmp_path / "provider.sqlite3"
        host = network.add_host(identity.peer_id)
        async with memory_peer(network, ledger=tmp_path / "caller.sqlite3") as caller:
            for _ in range(2):  # the provider runs twice, with the same key and ledger
                host.restart()  # as a new process: no stream of the last run survives
                async with Peer(identity, host=host, ledger=ledger) as provider:
                    provider.serve(models["iris"], price=PRICE)
                    iris = next(iter(provider.models))
                    for _ in range(2):
                        await caller.invoke(provider.addrs[0], iris, {"x": X})
        with Ledger.open(ledger, create=False) as held:
            receipts = held.receipts(role="provider")
            assert [r.seq for r in receipts] == [1, 2, 3, 4]
            assert receipts[2].prev_hash == receipts[1].receipt_hash
            assert held.audit() == []


@pytest.mark.slow
@pytest.mark.network
async def test_no_receipt_a_caller_holds_is_lost_when_the_provider_is_killed(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    """A `p2pnet peer` with a ledger is killed with SIGKILL during a burst of calls:
    every receipt the caller received is in the provider's ledger after the kill, and
    the provider's balances equal the sums of its receipts."""
    env = os.environ | {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    ledger = tmp_path / "provider.sqlite3"
    provider = start_peer(
        env, "--serve", str(models["iris"]), "--ledger", str(ledger), "--price", "1000,10000"
    )
    iris = provider.models["iris"]
    enough = trio.Event()
    done = 0

    async def keep_calling(caller: Peer) -> None:
        nonlocal done
        try:
            while True:
                await caller.invoke(provider.address, iris, {"x": X}, timeout=10)
                done += 1
                if done >= 40:
                    enough.set()
        except P2PNetError:  # the provider is gone
            pass

    try:
        async with Peer(ledger=tmp_path / "caller.sqlite3") as caller:
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(keep_calling, caller)
                await enough.wait()
                provider.proc.send_signal(signal.SIGKILL)
            received = ledger_of(caller).receipts(role="caller")
    finally:
        provider.proc.kill()
        provider.proc.wait()
    assert len(received) >= 40
    with Ledger.open(ledger, create=False) as held:
        issued = {r.receipt_hash for r in held.receipts(role="provider")}
        assert {r.receipt_hash for r in received} <= issued
        assert held.audit() == []


async def test_the_cheaper_provider_is_found_first_and_max_price_leaves_out_the_dear(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    cheap, dear = Price(1_000, 10_000, 0), Price(5_000, 10_000, 0)
    async with open_swarm(tmp_path) as swarm:
        providers = {}
        for name, price in (("dear", dear), ("cheap", cheap)):
            providers[name] = await swarm.peer(name)
            providers[name].serve(models["iris"], tasks=[TASK], price=price)
            assert await providers[name].announce() > 0
        caller = await swarm.peer("caller")
        offers = await caller.find(task=TASK)
        assert [o.record.price for o in offers] == [cheap, dear]  # as fast: cheaper first
        assert offers[0].to_dict()["price"] == {"per_call": 1_000, "per_mb": 10_000, "per_cpu_s": 0}
        assert [o.record.price for o in await caller.find(task=TASK, max_price=cheap)] == [cheap]
        await caller.call({"x": X}, task=TASK, max_price=Price(2_000, 10_000, 0))
        assert ledger_of(caller).balances().keys() == {providers["cheap"].peer_id}
        with pytest.raises(UnknownModelError, match="none at or under the max price"):
            await caller.call({"x": X}, task=TASK, max_price=Price(999, 0, 0))


async def test_a_caller_that_does_not_acknowledge_stands_last(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    every_two = AccountingConfig(ack_every_calls=2, ack_every_units=0)
    async with open_swarm(tmp_path) as swarm:
        provider = await swarm.peer("provider", accounting=every_two)  # expects one per 2
        provider.serve(models["iris"], tasks=[TASK], price=PRICE)
        caller = await swarm.peer("caller", accounting=every_two)
        never = AccountingConfig(ack_every_calls=0, ack_every_units=0)
        silent = await swarm.peer("silent", accounting=never)
        iris = next(iter(provider.models))
        accountant = provider.services.accountant
        assert accountant is not None
        for _ in range(6):
            await caller.invoke(provider.addrs[0], iris, {"x": X})
            await silent.invoke(provider.addrs[0], iris, {"x": X})
        # Both owe the same; only the caller acknowledged (the silent one never does).
        assert accountant.credit.balance(caller.peer_id, 0) > 0
        hard = accountant.config.credit.hard_threshold
        assert accountant.standing(silent.peer_id) < -hard < accountant.standing(caller.peer_id)


def test_credit_settings_come_from_config_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert load_credit(path) == CreditConfig()  # no file: the defaults
    path.write_text("[credit]\nallowance_rate = 0\nsoft_threshold = 4000\nack_every_calls = 4\n")
    credit = load_credit(path)
    assert credit.policy == CreditPolicy(
        allowance_rate=0, soft_threshold=4_000, hard_threshold=5_000
    )
    assert (credit.ack_every_calls, credit.ack_every_units) == (4, 1_000_000)
    for bad, message in (
        ("[credit]\nsoft = 1\n", "unknown key 'soft'"),
        ("[credit]\nallowance_rate = 1.5\n", "allowance_rate must be a whole number"),
        ("[credit]\nsoft_threshold = 10\nhard_threshold = 5\n", "at least soft_threshold"),
        ("credit = 3\n", r"\[credit\] must be a table"),
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            load_credit(path)


async def test_a_forwarded_pipeline_leaves_a_receipt_at_every_hop(
    tmp_path: Path,
    arith: dict[str, Path],  # noqa: F811  (test_pipeline's fixture, imported above)
) -> None:
    """caller -> plus1's peer, which sends times2 (a branch) and then add (the join) on:
    each hop's provider signs a receipt to the peer that forwarded to it, and every one
    is stored on both sides."""
    async with open_swarm(tmp_path) as swarm:
        steps = {}
        for name, task in (("plus1", "plus-one"), ("times2", "times-two"), ("add", "add")):
            steps[name] = await swarm.peer(name)
            steps[name].serve(arith[name], tasks=[task], price=PRICE)
            assert await steps[name].announce() > 0
        caller = await swarm.peer("caller")
        x = np.array([1.0, 2.0, 3.0], np.float32)
        result = await Pipeline.from_dict(SPEC).run(caller, {"x": x}, mode="forwarded")
        np.testing.assert_allclose(result.outputs["y"], expected(x))
        ran = [t.peer_id for t in result.steps]
        # Who forwarded to whom: the caller to the first hop, which sent the others on.
        forwarders = [caller.peer_id, ran[0], ran[0]]
        by_peer = {p.peer_id: p for p in steps.values()}
        for forwarder, provider in zip(forwarders, ran, strict=True):
            issued = ledger_of(by_peer[provider]).receipts(peer=forwarder, role="provider")
            assert len(issued) == 1, (forwarder, provider)
            held = caller if forwarder == caller.peer_id else by_peer[forwarder]
            received = ledger_of(held).receipts(peer=provider, role="caller")
            assert [r.receipt_hash for r in received] == [issued[0].receipt_hash]


async def test_a_caller_over_the_soft_threshold_is_asked_to_settle_and_acknowledges(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    policy = CreditPolicy(allowance_rate=0, soft_threshold=2_500, hard_threshold=100_000)
    rare = AccountingConfig(credit=policy, ack_every_calls=0, ack_every_units=0)
    async with open_swarm(tmp_path) as swarm:
        provider = await swarm.peer("provider", accounting=rare)
        provider.serve(models["iris"], tasks=[TASK], price=PRICE)
        caller = await swarm.peer("caller", accounting=rare)  # would never acknowledge
        iris = next(iter(provider.models))
        for _ in range(3):  # owes 3,003 after the third: over the soft threshold
            await caller.invoke(provider.addrs[0], iris, {"x": X})
        pair = (provider.peer_id, caller.peer_id)
        assert ledger_of(provider).last_acknowledgement(pair) is None
        await caller.invoke(provider.addrs[0], iris, {"x": X})  # carries the acknowledgement
        ack = ledger_of(provider).last_acknowledgement(pair)
        assert ack is not None and (ack.seq, ack.total_units) == (3, 3_003)
