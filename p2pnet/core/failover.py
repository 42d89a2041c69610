"""Calling one of several providers: what each attempt may take, which failures move on
to the next provider, which replies count as failures, and which error to report.
Decisions only; the caller (``ModelFinder.call_offers``) performs them.

Deadline split (``attempt_timeout``): like a per-try timeout with hedging (gRPC,
Envoy), an attempt that is not the last one planned gets ``share`` (half) of the time
left, but never less than ``floor`` seconds (nor more than what is left); the last
planned attempt gets all that is left. A provider that never answers (or drips bytes)
takes at most half the budget, and the next one gets at least half of the rest: with
30 s and three offers, 15 s, then 7.5 s, then 7.5 s.

Order (``attempt_order``): the caller's order (the ranking's), except that providers
in backoff (``ProviderStats.backoff_until``) go last, the one whose backoff ends first
first; they are tried only when every other provider has failed.

Failover (``is_provider_failure``): every failure that another provider may not share
moves on: the peer's own errors (``PeerError``: busy, internal, a model that failed,
outputs that do not fit), broken or oversized replies (``RemoteProtocolError``), the
network (``NetworkError``), no reply in its time (``DeadlineExceededError``), and a
provider that does not serve the model it signed a record for, or not to us
(``UnknownModelError``, ``PermissionDeniedError``). A model that fails on inputs that
fit its schema (``ModelExecutionError``) moves on too: the same model on another peer
may have more memory or another runtime, and a provider must not be able to keep a
caller from the others by claiming its model failed. The caller's own faults do not
move on: inputs that do not fit (``InvalidInputError``), a request over the size limit
(``PayloadTooLargeError``), bytes the peer says we broke (``LocalProtocolError``).

Report (``failure_report``): when every attempt failed, the most telling error (a
provider that broke the contract, then the model, then busy, then a lost connection,
then unreachable, then inputs refused, and only then a deadline), as a new error of
its class whose message names every provider tried and whose ``attempts`` lists them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from p2pnet.core.ranking import DEFAULT_POLICY, ProviderStats, RankingPolicy
from p2pnet.core.schema import ModelSchema, tensor_mismatch
from p2pnet.errors import (
    ConnectionLostError,
    DeadlineExceededError,
    InternalPeerError,
    InvalidInputError,
    ModelExecutionError,
    NetworkError,
    OutputSchemaError,
    P2PNetError,
    PeerBusyError,
    PeerError,
    PeerUnreachableError,
    PermissionDeniedError,
    RemoteProtocolError,
    UnknownModelError,
)

__all__ = [
    "DEFAULT_ATTEMPT_FLOOR",
    "DEFAULT_ATTEMPT_SHARE",
    "attempt_order",
    "attempt_timeout",
    "failure_report",
    "is_provider_failure",
    "most_telling",
    "output_mismatch",
]

DEFAULT_ATTEMPT_SHARE = 0.5
DEFAULT_ATTEMPT_FLOOR = 1.0


def attempt_timeout(
    remaining: float,
    attempts_left: int,
    *,
    share: float = DEFAULT_ATTEMPT_SHARE,
    floor: float = DEFAULT_ATTEMPT_FLOOR,
) -> float:
    """Seconds the next attempt may take, with ``remaining`` seconds left and
    ``attempts_left`` attempts planned (this one included); see the module docstring.

    Always in ``[0, remaining]``; all of ``remaining`` for the last planned attempt.

    Raises:
        ValueError: ``share`` not in (0, 1], or ``floor`` negative.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if not floor >= 0.0:
        raise ValueError(f"floor must be >= 0, got {floor}")
    if not remaining > 0.0:
        return 0.0
    if attempts_left <= 1 or math.isinf(remaining):
        return remaining
    return min(remaining, max(remaining * share, floor))


def attempt_order(
    candidates: Sequence[str],
    stats: Mapping[str, ProviderStats],
    now: float,
    policy: RankingPolicy = DEFAULT_POLICY,
) -> list[int]:
    """Indices into ``candidates`` (peer IDs, best first) in the order to call them:
    those not in backoff in their order, then those in backoff, the one whose backoff
    ends first first (ties keep their order)."""
    free: list[int] = []
    waiting: list[tuple[float, int]] = []
    for i, peer_id in enumerate(candidates):
        peer_stats = stats.get(peer_id)
        until = None if peer_stats is None else peer_stats.backoff_until(now, policy)
        if until is None:
            free.append(i)
        else:
            waiting.append((until, i))
    waiting.sort()
    return free + [i for _, i in waiting]


def is_provider_failure(error: P2PNetError) -> bool:
    """Whether the next provider should be tried after ``error`` (the module docstring
    says which errors do)."""
    return isinstance(
        error,
        PeerError
        | RemoteProtocolError
        | NetworkError
        | DeadlineExceededError
        | UnknownModelError
        | PermissionDeniedError,
    )


# Most telling first: what a provider did wrong says more than what merely happened.
_TELLING: tuple[type[P2PNetError], ...] = (
    OutputSchemaError,
    RemoteProtocolError,
    ModelExecutionError,
    InternalPeerError,
    PermissionDeniedError,
    UnknownModelError,
    PeerError,
    PeerBusyError,
    ConnectionLostError,
    PeerUnreachableError,
    NetworkError,
    InvalidInputError,
    DeadlineExceededError,
)


def _telling_rank(error: P2PNetError) -> int:
    # PeerBusyError is a PeerError: the more specific class is listed after the
    # general one here, so look for the most specific match first.
    if isinstance(error, PeerBusyError):
        return _TELLING.index(PeerBusyError)
    for i, cls in enumerate(_TELLING):
        if isinstance(error, cls):
            return i
    return len(_TELLING)


def most_telling(attempts: Sequence[tuple[str, P2PNetError]]) -> tuple[str, P2PNetError]:
    """The attempt whose error says most about why the call failed (the first tried
    among equals).

    Raises:
        ValueError: ``attempts`` is empty.
    """
    if not attempts:
        raise ValueError("no attempts to choose from")
    return min(attempts, key=lambda attempt: _telling_rank(attempt[1]))


def failure_report(attempts: Sequence[tuple[str, P2PNetError]]) -> P2PNetError:
    """The error that ends a call whose ``attempts`` (peer ID, error; in the order
    tried) all failed: the most telling, with ``peer`` set to its provider, a message
    that names every provider tried, and ``attempts`` set.

    Raises:
        ValueError: ``attempts`` is empty.
    """
    peer_id, chosen = most_telling(attempts)
    if len(attempts) == 1:
        report = type(chosen)(chosen.message, peer=chosen.peer or peer_id)
    else:
        tried = "; ".join(f"{p}: {e.code}" for p, e in attempts)
        report = type(chosen)(
            f"{chosen.message} [every provider failed; {len(attempts)} tried: {tried}]",
            peer=chosen.peer or peer_id,
        )
    report.attempts = tuple(attempts)
    return report


def output_mismatch(
    schema: ModelSchema,
    outputs: Mapping[str, npt.NDArray[Any]],
    inputs: Mapping[str, Any] | None = None,
) -> str | None:
    """Why ``outputs`` do not fit ``schema``'s outputs, or None if they do.

    Every declared output must be there and no other, each of its declared dtype, rank
    and fixed sizes; a symbolic dimension must have one size across the outputs and
    the ``inputs`` given as arrays (other inputs are not looked at).
    """
    declared = {spec.name: spec for spec in schema.outputs}
    missing = [name for name in declared if name not in outputs]
    if missing:
        return f"output {missing[0]!r} is missing; the record declares {_names(schema)}"
    extra = [name for name in outputs if name not in declared]
    if extra:
        return f"output {extra[0]!r:.80} is not declared; the record declares {_names(schema)}"
    symbols: dict[str, tuple[int, str]] = {}
    for spec in schema.inputs:
        value = (inputs or {}).get(spec.name)
        if isinstance(value, np.ndarray) and value.ndim == len(spec.shape):
            for dim, size in zip(spec.shape, value.shape, strict=True):
                if isinstance(dim, str):
                    symbols.setdefault(dim, (size, f"input {spec.name!r}"))
    for spec in schema.outputs:
        arr = outputs[spec.name]
        if not isinstance(arr, np.ndarray):
            return f"output {spec.name!r} is a {type(arr).__name__}, not a tensor"
        mismatch = tensor_mismatch(spec, arr, "output", "its signed record declares", symbols)
        if mismatch is not None:
            return mismatch
    return None


def _names(schema: ModelSchema) -> str:
    return ", ".join(spec.describe() for spec in schema.outputs) or "none"
