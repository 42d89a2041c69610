"""Checks of the fields of signed messages (capability records, usage receipts and
acknowledgements): each raises ValueError naming the field, which the decoders turn
into their own malformed-message error.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Final

import msgpack

from p2pnet.core.model_id import parse_model_id
from p2pnet.core.peer_id import public_key_from_peer_id
from p2pnet.errors import InvalidAddressError, InvalidModelIdError, P2PNetError

__all__ = [
    "check_int",
    "check_keys",
    "check_model_id",
    "check_peer_id",
    "check_text",
    "unpack_canonical",
]

# A model ID is 59 characters; the text is bounded before it is parsed.
MAX_MODEL_ID_LENGTH: Final = 100
# Would let a signed text rewrite a terminal.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Parsing a model ID with multiformats costs ~300 us, three times an Ed25519
# verification; records and receipts name the same models again and again.
_parse_model_id = lru_cache(maxsize=4096)(parse_model_id)


def unpack_canonical(data: bytes, what: str, error: type[P2PNetError]) -> object:
    """``data`` as msgpack (arrays as tuples, map keys as str).

    Raises:
        ``error``: not valid msgpack, saying so.
    """
    try:
        return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types for malformed input
        raise error(f"{what} is not valid msgpack: {exc}") from None


def check_keys(
    what: str, value: dict[Any, Any], expected: tuple[str, ...], error: type[P2PNetError]
) -> None:
    """``value`` has exactly the keys ``expected``, in that order.

    Raises:
        ``error``: a key missing, unknown or out of order, saying which.
    """
    if tuple(value) == expected:
        return
    missing = [k for k in expected if k not in value]
    unknown = [k for k in value if k not in expected]
    if missing:
        problem = f"lacks key {missing[0]!r}"
    elif unknown:
        problem = f"has unknown key {unknown[0]!r:.40}"
    else:
        problem = "has its keys out of order"
    raise error(f"{what} {problem}; its keys are, in order: {', '.join(expected)}")


def check_model_id(value: object) -> None:
    """A model ID in canonical form (CIDv1 raw sha2-256, base32)."""
    if not isinstance(value, str) or len(value) > MAX_MODEL_ID_LENGTH:
        raise ValueError(f"model_id must be a model ID (bafkrei...), not {value!r:.80}")
    try:
        canonical = _parse_model_id(value)
    except InvalidModelIdError as exc:
        raise ValueError(f"model_id: {exc}") from None
    if canonical != value:
        raise ValueError(f"model_id {value!r} is not in canonical form; use {canonical!r}")


def check_peer_id(field: str, value: object) -> None:
    """An Ed25519 peer ID (``12D3KooW...``)."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a peer ID str, not {type(value).__name__}")
    try:
        public_key_from_peer_id(value)
    except InvalidAddressError as exc:
        raise ValueError(f"{field}: {exc}") from None


def check_text(field: str, value: object, max_bytes: int, *, allow_empty: bool = True) -> None:
    """Unicode text of at most ``max_bytes`` bytes of UTF-8, without control characters."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a str, not {type(value).__name__}")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise ValueError(f"{field} is not valid Unicode (it holds a lone surrogate)") from None
    if size > max_bytes:
        raise ValueError(f"{field} is {size} bytes of UTF-8; at most {max_bytes}")
    if not value and not allow_empty:
        raise ValueError(f"{field} is empty")
    if _CONTROL.search(value):
        raise ValueError(f"{field} {value!r:.80} holds a control character")


def check_int(field: str, value: object, maximum: int, minimum: int = 0) -> None:
    """An int (not a bool) in ``minimum..maximum``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field} must be an int, not {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{field} is {value}; it must be in {minimum}..{maximum}")
