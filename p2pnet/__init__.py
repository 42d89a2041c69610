"""p2pnet: a peer-to-peer network for AI models.

Public API, re-exported here on purpose (loaded on first use, so that importing a
submodule such as ``p2pnet.core.records`` does not load py-libp2p or onnxruntime):

    Peer                 peer.py               a running peer: serve models, call others'
    PeerStatus           status.py             a typed snapshot of what a peer is doing
    Batching             core/batching.py      a served model's dynamic batching policy
    OnnxModel            runtime/              a loaded ONNX model with its ID and schema
    inspect_model        runtime/              ID, size and schema of a model file
    ModelInfo, ModelSchema, TensorSpec         what a model is and takes (core/)
    PeerAddress          core/address.py       a peer ID and the addresses to dial it at
    Identity             core/identity.py      a peer's Ed25519 key and peer ID
    WireLimits           core/messages.py      frame and message size limits
    errors               errors.py             the error hierarchy

The package, layer by layer from the bottom (docs/architecture.md draws it; imports
point downwards only):

    errors.py        the one error hierarchy, whose fault in the class name
    core/            pure: codecs, records, addresses, Kademlia, forwarding decisions
    runtime/         running models (onnxruntime, Python adapters), the served catalogue
    net/             hosts and streams: libp2p, the in-memory network, NAT, private networks
    sqlite_file.py   the SQLite files p2pnet keeps: created, recognised, reported on
    ledger/          receipts, acknowledgements and balances in SQLite, receipt logs
    accounting/      credit admission, signing and checking usage receipts, acknowledgements
    config.py        the config and data directories, named swarms
    status.py        PeerStatus and the status files of running peers
    modeltools/      offline model import (PyTorch, scikit-learn) and quantization
    dht/             the DHT node
    invoke/          calling models here and on other peers; the invoke protocol
    logs.py          logging for the command line
    discovery/       signed records, describe protocol, finding and calling with failover
    pipeline/        pipelines across peers
    trust/           spot checks of providers' results, their verdicts and marks (SQLite)
    services.py      the composition root: a peer's services built in one place
    peer.py          Peer
    inputs.py        tensors from command-line text and from JSON
    gateway/         HTTP front doors: a running peer's local API and Prometheus metrics,
                     the Open Inference Protocol v2 routes
    localswarm.py    peer processes on 127.0.0.1 (demo, benchmarks)
    simulate/        multi-peer simulations
    conformance/     Protocol 1.0 checks against any peer, or any client that calls one
    cli/             the ``p2pnet`` command
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2pnet import errors
    from p2pnet.core.address import PeerAddress
    from p2pnet.core.batching import Batching
    from p2pnet.core.identity import Identity
    from p2pnet.core.messages import WireLimits
    from p2pnet.core.model_info import ModelInfo
    from p2pnet.core.schema import ModelSchema, TensorSpec
    from p2pnet.peer import Peer
    from p2pnet.runtime.onnx_model import OnnxModel, inspect_model
    from p2pnet.status import PeerStatus

__all__ = [
    "Batching",
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
    "Batching": "p2pnet.core.batching",
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
