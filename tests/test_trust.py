"""Spot checks across peers (p2pnet/trust): honest providers running with different
onnxruntime thread counts are never marked; a provider that returns wrong outputs is
marked on the evidence of two others (of a fourth when another liar's made three
disagree), then skipped by discovery (and by pipelines,
whose orchestrated steps are checked like calls); the verdict and both
signed receipts survive a restart and show in ``p2pnet trust --json``; a trust store
file that is not one gives a clear error."""

from __future__ import annotations

import json
import math
import sqlite3
import stat
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from p2pnet import Peer
from p2pnet.cli import main
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.receipts import tensor_hash, verify_receipt
from p2pnet.core.spot_check import SpotCheckPolicy
from p2pnet.errors import TrustStoreError
from p2pnet.net.identity import generate_identity
from p2pnet.net.memory import MemoryNetwork
from p2pnet.pipeline import Pipeline
from p2pnet.runtime.onnx_model import OnnxModel
from p2pnet.status import PeerStatus
from p2pnet.trust import Opinion, TrustStore

TASK = "iris-species"
NEAR, FAR = 0.002, 0.010


class LyingModel:
    """Serves a genuine model (so its signed record is genuine) but shifts the
    probabilities it returns by ``shift``, keeping their dtype and shape."""

    def __init__(self, model: OnnxModel, shift: float = 0.05) -> None:
        self._model = model
        self._shift = shift

    @property
    def info(self) -> ModelInfo:
        return self._model.info

    @property
    def model_id(self) -> str:
        return self._model.model_id

    async def run(
        self, inputs: Mapping[str, Any], *, timeout: float = math.inf
    ) -> dict[str, npt.NDArray[Any]]:
        outputs = await self._model.run(inputs, timeout=timeout)
        outputs["probabilities"] = (outputs["probabilities"] + self._shift).astype(np.float32)
        return outputs

    async def wait_idle(self, timeout: float) -> bool:
        return await self._model.wait_idle(timeout)


@dataclass
class Swarm:
    caller: Peer
    providers: list[Peer]


@asynccontextmanager
async def open_swarm(
    iris: Path, tmp_path: Path, threads: list[int], liars: int, policy: SpotCheckPolicy
) -> AsyncIterator[Swarm]:
    """A bootstrap peer, providers of iris with the given thread counts (the first
    ``liars`` of them liars, each its own lie, and nearer the caller than the others, so
    they are called and asked first), and
    a caller with a ledger and a trust store. Every peer keeps accounts: results carry
    signed receipts."""
    near: set[str] = set()

    def latency(src: str, dst: str) -> float:
        return NEAR if src in near or dst in near else FAR

    async with AsyncExitStack() as stack:
        network = await stack.enter_async_context(MemoryNetwork(latency=latency, seed=3))

        async def peer(name: str, **options: Any) -> Peer:
            identity = generate_identity()
            return await stack.enter_async_context(
                Peer(
                    identity,
                    host=network.add_host(identity.peer_id),
                    ledger=tmp_path / f"{name}.ledger",
                    **options,
                )
            )

        boot = await peer("boot")
        providers = []
        for i, count in enumerate(threads):
            provider = await peer(f"p{i}", bootstrap=[boot.addrs[0]])
            model: Any = OnnxModel.load(iris, threads=count)
            if i < liars:
                model = LyingModel(model, 0.05 * (i + 1))
                near.add(provider.peer_id)
            provider.serve(model, tasks=[TASK])
            assert await provider.announce() > 0
            providers.append(provider)
        caller = await peer(
            "caller",
            bootstrap=[boot.addrs[0]],
            trust_store=tmp_path / "trust.sqlite3",
            spot_checks=policy,
        )
        yield Swarm(caller, providers)


def inputs(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {"x": (rng.random((3, 4)) * 7).astype(np.float32)}


@pytest.mark.slow  # 24 calls, each found and checked across the swarm: ~4 s
async def test_honest_providers_with_other_thread_counts_are_never_marked(
    models: dict[str, Path], tmp_path: Path
) -> None:
    policy = SpotCheckPolicy(rate=1.0, max_concurrent=64, seed=1)
    calls = 24
    async with open_swarm(models["iris"], tmp_path, [1, 2, 4], 0, policy) as swarm:
        checker = swarm.caller.spot_checker
        assert checker is not None
        for i in range(calls):
            await swarm.caller.call(inputs(i), task=TASK)
        await checker.wait_until(calls)
        stats = checker.stats
        assert stats.agreed == calls and stats.skipped_busy == 0
        assert stats.disagreed == stats.unresolved == stats.marked == 0
        assert checker.store.marks() == []
        (verdict, *_) = checker.store.verdicts()
        # Receipts on both sides name the same runtime: the results were compared bitwise.
        assert verdict.comparisons["first-second"]["mode"] == "bitwise"
        assert verdict.opinions[0].runtime.startswith("onnxruntime/")


async def test_a_lying_provider_is_marked_with_evidence_and_then_skipped(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = SpotCheckPolicy(rate=1.0, seed=2)
    async with open_swarm(models["iris"], tmp_path, [1, 2, 1], 1, policy) as swarm:
        liar = swarm.providers[0]
        checker = swarm.caller.spot_checker
        assert checker is not None
        offer, lied = await swarm.caller.call_with_offer(inputs(0), task=TASK)
        assert offer.record.peer_id == liar.peer_id  # the nearest: called first
        await checker.wait_until(1)
        assert checker.stats.marked == 1 and checker.store.is_untrusted(liar.peer_id)
        assert checker.stats.extra_calls == 2  # a second and a third opinion
        # From now on discovery does not offer the liar.
        search = await swarm.caller.finder.search(task=TASK)
        assert search.untrusted == (liar.peer_id,)
        assert liar.peer_id not in {o.record.peer_id for o in search.offers}
        offer, _ = await swarm.caller.call_with_offer(inputs(1), task=TASK)
        assert offer.record.peer_id != liar.peer_id
        await checker.wait_until(2)
        assert checker.stats.agreed == 1 and checker.stats.marked == 1
        # p2pnet status shows it, and the status file carries it.
        trust = swarm.caller.status().trust
        assert trust["marked"] == trust["untrusted"] == trust["disagreed"] == 1
        assert trust["extra_calls"] == 3 and trust["agreed"] == 1
        assert PeerStatus.from_dict(swarm.caller.status().to_dict()).trust == trust

    # The verdict and the evidence survive the peer: read back from the file.
    with TrustStore.open(tmp_path / "trust.sqlite3", create=False) as store:
        (disagree,) = store.verdicts(outcome="disagree")
        assert [m.peer for m in store.marks()] == [liar.peer_id]
    assert disagree.marked == liar.peer_id and disagree.provider == liar.peer_id
    assert len(disagree.opinions) == 3
    for opinion in disagree.opinions:
        assert opinion.receipt is not None
        receipt = verify_receipt(opinion.receipt, provider=opinion.peer)
        assert receipt.result_hash == opinion.result_hash
    assert disagree.opinions[0].result_hash == tensor_hash(lied)
    first_second = disagree.comparisons["first-second"]
    assert not first_second["agree"] and first_second["how"] == "values"
    assert first_second["tensor"] == "probabilities"
    assert disagree.comparisons["second-third"]["agree"]

    capsys.readouterr()
    assert main(["trust", "--trust", str(tmp_path / "trust.sqlite3"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [m["peer"] for m in shown["untrusted"]] == [liar.peer_id]
    marked = [v for v in shown["verdicts"] if v["marked"]]
    assert marked[0]["opinions"][0]["receipt"] == disagree.opinions[0].receipt.hex()
    assert shown["counts"] == {"agree": 1, "disagree": 1, "unresolved": 0}
    assert main(["trust", "--trust", str(tmp_path / "trust.sqlite3")]) == 0
    assert "1 providers marked untrusted" in capsys.readouterr().out
    assert main(["trust", "forget", liar.peer_id, "--trust", str(tmp_path / "trust.sqlite3")]) == 0
    with TrustStore.open(tmp_path / "trust.sqlite3") as store:
        assert store.marks() == [] and not store.is_untrusted(liar.peer_id)
    assert main(["trust", "forget", liar.peer_id, "--trust", str(tmp_path / "trust.sqlite3")]) == 1


async def test_two_liars_and_an_honest_provider_ask_a_fourth_opinion(
    models: dict[str, Path], tmp_path: Path
) -> None:
    policy = SpotCheckPolicy(rate=1.0, seed=2)
    async with open_swarm(models["iris"], tmp_path, [1, 1, 1, 1], 2, policy) as swarm:
        liars = {p.peer_id for p in swarm.providers[:2]}
        checker = swarm.caller.spot_checker
        assert checker is not None
        offer, _ = await swarm.caller.call_with_offer(inputs(0), task=TASK)
        assert offer.record.peer_id in liars  # the nearest: called first
        await checker.wait_until(1)
        # The other liar disagrees, and so does the honest third: no two of three agree.
        # A fourth (honest) agrees with the third: the liar checked is the odd one.
        assert checker.stats.extra_calls == 3 and checker.stats.marked == 1
        (verdict,) = checker.store.verdicts(outcome="disagree")
        assert verdict.marked == verdict.provider == offer.record.peer_id
        assert [o.peer in liars for o in verdict.opinions] == [True, True, False, False]
        assert verdict.comparisons["third-fourth"]["agree"]
        assert not any(v["agree"] for k, v in verdict.comparisons.items() if k != "third-fourth")
        # The other liar, checked next with the first one left out, meets two who agree.
        offer, _ = await swarm.caller.call_with_offer(inputs(1), task=TASK)
        assert offer.record.peer_id in liars - {verdict.marked}
        await checker.wait_until(2)
        assert {m.peer for m in checker.store.marks()} == liars
        assert checker.stats.unresolved == 0


async def test_an_orchestrated_pipeline_step_is_spot_checked_and_the_liar_left_out_of_plans(
    models: dict[str, Path], tmp_path: Path
) -> None:
    policy = SpotCheckPolicy(rate=1.0, seed=2)
    pipeline = Pipeline.from_dict(
        {
            "pipeline": "species",
            "inputs": {"x": "float32[N, 4]"},
            "steps": {"classify": {"task": TASK, "inputs": {"x": "input.x"}}},
            "outputs": {"p": "classify.probabilities"},
        }
    )
    async with open_swarm(models["iris"], tmp_path, [1, 2, 1], 1, policy) as swarm:
        liar = swarm.providers[0]
        checker = swarm.caller.spot_checker
        assert checker is not None
        # Forwarded, the caller never holds a step's inputs and outputs together: no check.
        result = await pipeline.run(swarm.caller, inputs(0), mode="forwarded")
        assert result.steps[0].peer_id == liar.peer_id and checker.stats.considered == 0
        result = await pipeline.run(swarm.caller, inputs(1))
        assert result.steps[0].peer_id == liar.peer_id  # the nearest: planned first
        assert checker.stats.considered == checker.stats.sampled == 1
        await checker.wait_until(1)
        assert checker.store.is_untrusted(liar.peer_id)
        (verdict,) = checker.store.verdicts(outcome="disagree")
        assert verdict.provider == verdict.marked == liar.peer_id
        plan = await pipeline.plan(swarm.caller)
        assert liar.peer_id not in {o.record.peer_id for o in plan.steps["classify"].offers}


def test_a_store_keeps_marks_across_a_restart_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "trust.sqlite3"
    opinions = (Opinion("p1", bytes(32), "rt", b"receipt"), Opinion("p2", bytes(32), "rt"))
    with TrustStore.open(path, clock=lambda: 1000.0) as store:
        stored = store.record(
            model_id="m", outcome="disagree", opinions=opinions, comparisons={}, marked="p1"
        )
        with pytest.raises(ValueError, match="gave no opinion"):
            store.record(
                model_id="m", outcome="agree", opinions=opinions, comparisons={}, marked="p9"
            )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with TrustStore.open(path) as store:
        assert store.is_untrusted("p1") and not store.is_untrusted("p2")
        (again,) = store.verdicts("p2")
        assert again == stored and again.checked_at == 1_000_000
        assert store.verdicts("p3") == []


def test_a_file_that_is_not_a_trust_store_gives_a_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database at all, just some bytes" * 200)
    with pytest.raises(TrustStoreError, match="not an SQLite database"):
        TrustStore.open(garbage)
    foreign = tmp_path / "foreign.sqlite3"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(TrustStoreError, match="another program"):
        TrustStore.open(foreign)
    with pytest.raises(TrustStoreError, match="no trust store"):
        TrustStore.open(tmp_path / "missing.sqlite3", create=False)
    assert main(["trust", "--trust", str(garbage)]) != 0


def test_the_trust_table_of_the_config_file(tmp_path: Path) -> None:
    from p2pnet.config import load_trust
    from p2pnet.core.spot_check import Tolerance
    from p2pnet.errors import ConfigError

    config = tmp_path / "config.toml"
    assert load_trust(config) == SpotCheckPolicy()
    config.write_text(
        "[trust]\nspot_check_rate = 0.1\nmax_concurrent_checks = 4\nrtol = 1e-2\n"
        '[trust.models."bafkreimodel"]\natol = 0.5\n'
    )
    policy = load_trust(config)
    assert policy.rate == 0.1 and policy.max_concurrent == 4
    assert policy.tolerances.for_model("other") == Tolerance(atol=1e-4, rtol=1e-2)
    assert policy.tolerances.for_model("bafkreimodel") == Tolerance(atol=0.5, rtol=1e-2)
    for bad, says in (
        ("spot_check_rate = 2", "rate"),
        ("spot_check_rate = 'often'", "must be a number"),
        ("colour = 1", "unknown key 'colour'"),
        ("atol = -1", "atol"),
        ("[trust.models.m]\nspot_check_rate = 0.5", "unknown key"),
    ):
        config.write_text(f"[trust]\n{bad}\n")
        with pytest.raises(ConfigError, match=says):
            load_trust(config)
