"""p2pnet: a peer-to-peer network for AI models.

Public API, re-exported here on purpose (loaded on first use, so that importing a
submodule such as ``p2pnet.core.records`` does not load py-libp2p or onnxruntime):

    Peer                 p2pnet/peer.py             a running peer: serve models, call others'
    PeerStatus           p2pnet/status.py           a typed snapshot of what a peer is doing
    OnnxModel            p2pnet/runtime/            a loaded ONNX model with its ID and schema
    inspect_model        p2pnet/runtime/            ID, size and schema of a model file
    ModelInfo, ModelSchema, TensorSpec              what a model is and takes (p2pnet/core/)
    PeerAddress          p2pnet/core/address.py     a peer ID and the addresses to dial it at
    Identity             p2pnet/core/identity.py    a peer's Ed25519 key and peer ID
    WireLimits           p2pnet/core/messages.py    frame and message size limits
    errors               p2pnet/errors.py           the error hierarchy

The packages and what each may import are drawn in docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2pnet import errors
    from p2pnet.core.address import PeerAddress
    from p2pnet.core.identity import Identity
    from p2pnet.core.messages import WireLimits
    from p2pnet.core.model_info import ModelInfo
    from p2pnet.core.schema import ModelSchema, TensorSpec
    from p2pnet.peer import Peer
    from p2pnet.runtime.onnx_model import OnnxModel, inspect_model
    from p2pnet.status import PeerStatus

__all__ = [
    "Identity",
    "ModelInfo",
    "ModelSchema",
    "OnnxModel",
    "Peer",
    "PeerAddress",
    "PeerStatus",
    "TensorSpec",
    "WireLimits",
    "__version__",
    "errors",
    "inspect_model",
]

__version__ = "0.1.0"

# name -> the module it lives in
_EXPORTS = {
    "errors": "p2pnet.errors",
    "Identity": "p2pnet.core.identity",
    "ModelInfo": "p2pnet.core.model_info",
    "ModelSchema": "p2pnet.core.schema",
    "OnnxModel": "p2pnet.runtime.onnx_model",
    "Peer": "p2pnet.peer",
    "PeerAddress": "p2pnet.core.address",
    "PeerStatus": "p2pnet.status",
    "TensorSpec": "p2pnet.core.schema",
    "WireLimits": "p2pnet.core.messages",
    "inspect_model": "p2pnet.runtime.onnx_model",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'p2pnet' has no attribute {name!r}")
    value = importlib.import_module(module)
    if name != "errors":
        value = getattr(value, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
