"""What a peer serves: each model, the tasks it is announced for, who may call it.

``Peer.serve`` fills the catalogue (before or after the peer starts); the invoke
server runs its models, the record publisher signs a record per entry, the describe
server shows each record to the peers its access list permits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from p2pnet.core.access import AccessPolicy
from p2pnet.core.kad.keys import key_for_model, key_for_task
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.pricing import FREE, Price
from p2pnet.core.records import CapabilityRecord
from p2pnet.errors import UsageError
from p2pnet.runtime.served import ServedModel

__all__ = ["ModelCatalogue"]


class ModelCatalogue:
    """The models ``peer_id`` serves, by model ID, with their tasks and access lists."""

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.access = AccessPolicy(peer_id)
        self._models: dict[str, ServedModel] = {}
        self._tasks: dict[str, tuple[str, ...]] = {}
        self._prices: dict[str, Price] = {}

    @property
    def models(self) -> Mapping[str, ServedModel]:
        """Served models by model ID (a read-only view that follows later additions)."""
        return MappingProxyType(self._models)

    def add(
        self,
        model: ServedModel,
        tasks: Sequence[str] = (),
        allow: Sequence[str] | None = None,
        price: Price = FREE,
    ) -> ModelInfo:
        """Serve ``model`` under ``tasks`` to ``allow`` (peer IDs; None: everyone) at
        ``price`` (what a call costs; its record states it).

        Adding a model ID again replaces its tasks, access list and price and keeps the
        model first added.

        Raises:
            UsageError: a task tag that is not lower-case letters, digits and '-', or
                model facts no capability record can carry.
            InvalidAddressError: an ``allow`` entry that is not a peer ID.
        """
        info = model.info
        tasks = tuple(dict.fromkeys(tasks))
        _check_publishable(info, tasks, self.peer_id)
        if allow is not None:
            self.access.restrict(info.model_id, allow)
        self._models.setdefault(info.model_id, model)
        self._tasks[info.model_id] = tasks
        self._prices[info.model_id] = price
        return info

    def price(self, model_id: str) -> Price:
        """What a call of ``model_id`` costs (free for a model not served here: such a
        call fails before it costs anything)."""
        return self._prices.get(model_id, FREE)

    def tasks(self, model_id: str) -> tuple[str, ...]:
        """The tasks ``model_id`` is announced for."""
        return self._tasks[model_id]

    def entries(self) -> list[tuple[ModelInfo, tuple[str, ...]]]:
        """(model facts, tasks) of every served model, in the order they were added."""
        return [(model.info, self._tasks[model_id]) for model_id, model in self._models.items()]

    def keys(self, model_id: str | None = None) -> list[bytes]:
        """DHT keys to announce: the model's and its tasks' (every model's if None).

        Raises:
            KeyError: ``model_id`` is not served.
        """
        served = self._tasks if model_id is None else {model_id: self._tasks[model_id]}
        out: dict[bytes, None] = {}
        for mid, tasks in served.items():
            out[key_for_model(mid)] = None
            for task in tasks:
                out[key_for_task(task)] = None
        return list(out)


def _check_publishable(info: ModelInfo, tasks: tuple[str, ...], peer_id: str) -> None:
    """Raise UsageError if no capability record can state ``info`` under ``tasks``."""
    try:
        CapabilityRecord(
            model_id=info.model_id,
            peer_id=peer_id,
            schema=info.schema,
            tasks=tasks,
            name=info.name[:128],
            version=info.version,
            runtime=info.runtime,
            addrs=(),
            seq=1,
            expires_at=1,
            generation=info.generation,
        )
    except ValueError as exc:
        raise UsageError(f"cannot publish model {info.name}: {exc}") from None
