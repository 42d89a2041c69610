"""Model IDs: CIDv1, raw codec, sha2-256, base32 text (``bafkrei...``) of a model file's bytes.

Identical files served by different peers share one ID, and anyone holding the
bytes can check them against it.
"""

from __future__ import annotations

import hashlib
from typing import Final

from multiformats import CID, multihash

from p2pnet.core.text import quote_bounded
from p2pnet.errors import InvalidModelIdError

__all__ = [
    "MAX_MODEL_ID_LENGTH",
    "is_model_id",
    "model_id_from_digest",
    "model_id_of_bytes",
    "parse_model_id",
]

MODEL_ID_PREFIX: Final = "bafkrei"
# A model ID is 59 characters; longer text is refused before any parsing, whose cost
# grows faster than the text (base58 decoding is quadratic).
MAX_MODEL_ID_LENGTH: Final = 128


def model_id_from_digest(sha256_digest: bytes) -> str:
    """The model ID of a file whose SHA-256 digest is ``sha256_digest``."""
    if len(sha256_digest) != 32:
        raise ValueError("a sha2-256 digest is 32 bytes")
    return str(CID("base32", 1, "raw", multihash.wrap(sha256_digest, "sha2-256")))


def model_id_of_bytes(data: bytes) -> str:
    """The model ID of ``data``."""
    return model_id_from_digest(hashlib.sha256(data).digest())


def parse_model_id(text: str) -> str:
    """Check that ``text`` is a model ID and return it in canonical form.

    Raises:
        InvalidModelIdError: longer than MAX_MODEL_ID_LENGTH, not a CID, or not CIDv1
            raw sha2-256.
    """
    if len(text) > MAX_MODEL_ID_LENGTH:
        raise InvalidModelIdError(
            f"{quote_bounded(text)} is not a model ID: {len(text)} characters, and a model "
            "ID has 59 (a CID like bafkrei...)"
        )
    try:
        cid = CID.decode(text.strip())
    except Exception as exc:  # multiformats raises several unrelated types for bad text
        raise InvalidModelIdError(
            f"{quote_bounded(text)} is not a model ID (expected a CID like bafkrei...): "
            f"{str(exc)[:200]}"
        ) from None
    if cid.version != 1 or cid.codec.name != "raw" or cid.hashfun.name != "sha2-256":
        raise InvalidModelIdError(
            f"{quote_bounded(text)} is a CIDv{cid.version} {cid.codec.name}/"
            f"{cid.hashfun.name}; model IDs are CIDv1 raw sha2-256 (bafkrei...)"
        )
    return str(cid.set(base="base32"))


def is_model_id(text: str) -> bool:
    """Whether ``text`` is a model ID (``parse_model_id`` takes it): how a name that may
    be a task tag or a model ID is told apart."""
    try:
        parse_model_id(text)
    except InvalidModelIdError:
        return False
    return True
