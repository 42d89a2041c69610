"""p2pnet: a peer-to-peer network for AI models.

Public API, re-exported here on purpose:

    Peer                 p2pnet/peer.py             a running peer: serve models, call others'
    OnnxModel            p2pnet/runtime/            a loaded ONNX model with its ID and schema
    inspect_model        p2pnet/runtime/            ID, size and schema of a model file
    ModelInfo, ModelSchema, TensorSpec              what a model is and takes
    WireLimits           p2pnet/core/messages.py    frame and message size limits
    errors               p2pnet/errors.py           the error hierarchy

Packages (imports point downwards only): ``core`` (pure: codec, framing, schema,
model IDs), ``runtime`` (onnxruntime), ``net`` (the only code touching py-libp2p),
``invoke`` (the invoke protocol's server and client), ``peer``, ``cli``.
"""

from p2pnet import errors
from p2pnet.core.messages import WireLimits
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.peer import Peer
from p2pnet.runtime.onnx_model import ModelInfo, OnnxModel, inspect_model

__all__ = [
    "ModelInfo",
    "ModelSchema",
    "OnnxModel",
    "Peer",
    "TensorSpec",
    "WireLimits",
    "__version__",
    "errors",
    "inspect_model",
]

__version__ = "0.1.0"
