"""Per-model access lists: which peers a served model answers.

A model served without a list answers everyone. A model with one answers only the
peers it names (and the serving peer itself); any other caller gets
PermissionDeniedError, and the describe server leaves the model's record out of its
replies to them, so ``find`` never offers a model the asker may not call. The caller
is the peer at the other end of the stream, authenticated by the security handshake:
for a step of a forwarded pipeline, that is the peer that forwarded it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from p2pnet.core.address import parse_peer_address
from p2pnet.errors import PermissionDeniedError

__all__ = ["AccessPolicy", "parse_allow_list"]


def parse_allow_list(peers: Iterable[str]) -> frozenset[str]:
    """Peer IDs (or ``/p2p/`` multiaddrs, whose peer ID is taken) as canonical peer IDs.

    Entries may hold several IDs separated by commas, as ``--allow A,B`` does.

    Raises:
        InvalidAddressError: an entry that is not a peer ID.
    """
    out: set[str] = set()
    for entry in peers:
        for text in entry.split(","):
            if text.strip():
                out.add(parse_peer_address(text.strip()).peer_id)
    return frozenset(out)


class AccessPolicy:
    """Access lists by model ID; a model without one is open to all.

    Args:
        local_peer_id: this peer's ID, which may always call its own models.
    """

    def __init__(self, local_peer_id: str = "") -> None:
        self.local_peer_id = local_peer_id
        self._allowed: dict[str, frozenset[str]] = {}

    def restrict(self, model_id: str, peers: Iterable[str]) -> None:
        """Serve ``model_id`` to ``peers`` only (peer IDs, see parse_allow_list)."""
        self._allowed[model_id] = parse_allow_list(peers)

    def allowed(self, model_id: str) -> frozenset[str] | None:
        """The peers ``model_id`` is served to, or None: everyone."""
        return self._allowed.get(model_id)

    @property
    def lists(self) -> Mapping[str, frozenset[str]]:
        """Every access list, by model ID."""
        return self._allowed

    def permits(self, model_id: str, caller: str) -> bool:
        allowed = self._allowed.get(model_id)
        return allowed is None or caller in allowed or caller == self.local_peer_id

    def check(self, model_id: str, caller: str, name: str = "") -> None:
        """Raise PermissionDeniedError unless ``caller`` may call ``model_id``."""
        if not self.permits(model_id, caller):
            label = f"{name} {model_id}" if name else model_id
            raise PermissionDeniedError(
                f"model {label} is served to the peers on its access list only, and "
                f"{caller} is not on it; ask the serving peer's operator to add it (--allow)"
            )
