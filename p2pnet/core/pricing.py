"""Prices, units and the cost of a call: integer arithmetic both sides agree on.

Units are counted in micro-units (``MICRO_UNITS_PER_UNIT`` = 1,000,000 to a unit), as
ints everywhere, so a provider and its caller compute the same number from the same
usage. A ``Price`` has three parts, each in micro-units and >= 0:

    per_call    for every call
    per_mb      per 10**6 bytes moved: the request's and the reply's tensor data bytes
    per_cpu_s   per CPU second of the model's run, counted in whole milliseconds

All zero (``FREE``) is free: a record without a price is free.

``units_for(price, usage)`` is one rounding of one exact sum::

    cpu_ms = round(usage.cpu_s * 1000)              (to nearest, ties to even)
    units  = ceil((per_call * 10**6 + per_mb * (bytes_in + bytes_out)
                   + per_cpu_s * cpu_ms * 1000) / 10**6)

Bytes are the tensors' data bytes (``tensor_bytes``: the sum of each array's
``nbytes``), not frame or stream bytes, so both sides count them exactly. The caller
cannot see the provider's CPU time; it checks a charge against ``max_units`` (its
wall-clock time of the call times the runtime's threads bounds the CPU time), so a
provider charging more than its price allows is caught (issue 13, item 6).

``REFERENCE_PRICE`` fixes what a unit is worth when figures are given: one unit is about
one CPU second of work. Measured (docs/benchmarks.md): a warm iris call costs about 1.4
ms of CPU over both processes, and moving 64 MiB costs 0.68 s (about 10 ms per MB). So
``per_call`` 1,000 (1 ms), ``per_mb`` 10,000 (10 ms), ``per_cpu_s`` 1,000,000; an iris
call (16 bytes in, 20 bytes out, well under 0.5 ms of CPU) costs 1,001 micro-units.

Ranking by price as well as latency (``rank_by_cost_and_latency``): ``core/ranking.py``
orders providers (healthy first, by latency EWMA; cooling ones last). Among the healthy
ones, those about as fast as the fastest (expected latency at most ``max_slowdown``
times the fastest's plus ``latency_slack`` seconds: 2x + 5 ms by default) are "fast
enough" and go first, cheapest first (``expected_cost`` of the call's estimated usage),
ties by latency then by the ranking's order; the other healthy ones follow in the
ranking's order, then the cooling ones. So price decides between comparable providers,
and a cheap but slow or failing provider does not displace a fast one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from p2pnet.core.ranking import ProviderScore

__all__ = [
    "BYTES_PER_MB",
    "FREE",
    "MAX_PRICE_PART",
    "MICRO_UNITS_PER_UNIT",
    "REFERENCE_PRICE",
    "CostRankingPolicy",
    "Price",
    "Usage",
    "cost_key",
    "expected_cost",
    "max_units",
    "price_from_wire",
    "price_to_wire",
    "rank_by_cost_and_latency",
    "tensor_bytes",
    "units_for",
    "within_max_price",
]

MICRO_UNITS_PER_UNIT: Final = 1_000_000
BYTES_PER_MB: Final = 1_000_000
# The largest price part: a million units. Keeps every product far inside 64 bits'
# reach of msgpack and of SQLite's INTEGER for any realistic usage.
MAX_PRICE_PART: Final = 10**12

_PRICE_FIELDS: Final = ("per_call", "per_mb", "per_cpu_s")


def _check_part(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(
            f"price {name} must be an integer of micro-units, got {type(value).__name__}"
        )
    if not 0 <= value <= MAX_PRICE_PART:
        raise ValueError(f"price {name} must be in 0..{MAX_PRICE_PART} micro-units, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class Price:
    """What a provider charges, in micro-units: per call, per MB moved, per CPU second.

    Raises:
        ValueError: a part that is not an int in 0..MAX_PRICE_PART.
    """

    per_call: int = 0
    per_mb: int = 0
    per_cpu_s: int = 0

    def __post_init__(self) -> None:
        for name in _PRICE_FIELDS:
            _check_part(name, getattr(self, name))

    @property
    def is_free(self) -> bool:
        """Whether every part is zero."""
        return self.per_call == 0 and self.per_mb == 0 and self.per_cpu_s == 0


FREE: Final = Price()
REFERENCE_PRICE: Final = Price(per_call=1_000, per_mb=10_000, per_cpu_s=1_000_000)


@dataclass(frozen=True, slots=True)
class Usage:
    """What one call used: tensor data bytes received and sent by the provider, CPU seconds.

    Raises:
        ValueError: a negative byte count, or a CPU time negative or not finite.
    """

    bytes_in: int = 0
    bytes_out: int = 0
    cpu_s: float = 0.0

    def __post_init__(self) -> None:
        if self.bytes_in < 0 or self.bytes_out < 0:
            raise ValueError(f"byte counts must be >= 0, got {self.bytes_in} and {self.bytes_out}")
        if not 0.0 <= self.cpu_s < math.inf:
            raise ValueError(f"cpu_s must be finite and >= 0, got {self.cpu_s}")

    @property
    def cpu_ms(self) -> int:
        """CPU time in whole milliseconds, rounded to nearest (ties to even)."""
        return round(self.cpu_s * 1000)


class _HasNbytes(Protocol):
    @property
    def nbytes(self) -> int: ...


def tensor_bytes(tensors: Iterable[_HasNbytes] | Mapping[str, _HasNbytes]) -> int:
    """The data bytes of ``tensors`` (arrays, or a mapping name -> array): what a call
    counts as bytes moved."""
    arrays = tensors.values() if isinstance(tensors, Mapping) else tensors
    return sum(int(array.nbytes) for array in arrays)


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def units_for(price: Price, usage: Usage) -> int:
    """The micro-units ``usage`` costs at ``price`` (the formula in the module docstring).

    Deterministic, and monotone: more bytes or more CPU never cost less.
    """
    exact = (
        price.per_call * BYTES_PER_MB
        + price.per_mb * (usage.bytes_in + usage.bytes_out)
        + price.per_cpu_s * usage.cpu_ms * (BYTES_PER_MB // 1000)
    )
    return _ceil_div(exact, BYTES_PER_MB)


def max_units(
    price: Price, request_bytes: int, reply_bytes: int, wall_s: float, threads: int
) -> int:
    """The most a provider may charge for a call the caller saw take ``wall_s`` seconds,
    on a runtime of ``threads`` threads: its CPU time is at most ``wall_s * threads``.

    Raises:
        ValueError: negative bytes, threads below 1, or ``wall_s`` negative or not finite.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    return units_for(price, Usage(request_bytes, reply_bytes, wall_s * threads))


def expected_cost(
    price: Price, request_bytes: int, expected_reply_bytes: int, cpu_s_estimate: float
) -> int:
    """The micro-units a call is expected to cost: for ranking offers before the call.

    Raises:
        ValueError: negative bytes, or a CPU estimate negative or not finite.
    """
    return units_for(price, Usage(request_bytes, expected_reply_bytes, cpu_s_estimate))


def cost_key(price: Price, usage_estimate: Usage) -> int:
    """The sort key of an offer by price: its expected cost, lowest first."""
    return units_for(price, usage_estimate)


def within_max_price(price: Price, max_price: Price | None) -> bool:
    """Whether ``price`` is at most ``max_price`` in every part (None: no limit).

    Part by part, so a caller's limit means the same whatever the call's size.
    """
    if max_price is None:
        return True
    return (
        price.per_call <= max_price.per_call
        and price.per_mb <= max_price.per_mb
        and price.per_cpu_s <= max_price.per_cpu_s
    )


def price_to_wire(price: Price) -> dict[str, int]:
    """The ``price`` field of a capability record: a map of the three parts."""
    return {"per_call": price.per_call, "per_mb": price.per_mb, "per_cpu_s": price.per_cpu_s}


def price_from_wire(obj: Any) -> Price:
    """The Price in a record's ``price`` field: a map with exactly the three parts, each
    an int in 0..MAX_PRICE_PART. (A record decoder raises MalformedRecordError for it.)

    Raises:
        ValueError: not a map, a part missing, an unknown key, or a part out of bounds,
            with the reason.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"price must be a map, got {type(obj).__name__}")
    unknown = [key for key in obj if key not in _PRICE_FIELDS]
    if unknown:
        shown = ", ".join(repr(key)[:40] for key in unknown[:3])
        raise ValueError(f"price has unknown keys: {shown}")
    missing = [name for name in _PRICE_FIELDS if name not in obj]
    if missing:
        raise ValueError(f"price lacks {', '.join(missing)}")
    return Price(*(_check_part(name, obj[name]) for name in _PRICE_FIELDS))


@dataclass(frozen=True, slots=True)
class CostRankingPolicy:
    """How much slower than the fastest healthy provider a provider may be and still
    compete on price: expected latency <= fastest * max_slowdown + latency_slack.

    Raises:
        ValueError: max_slowdown below 1, or latency_slack negative or not finite.
    """

    max_slowdown: float = 2.0
    latency_slack: float = 0.005

    def __post_init__(self) -> None:
        if not 1.0 <= self.max_slowdown < math.inf:
            raise ValueError(f"max_slowdown must be finite and >= 1, got {self.max_slowdown}")
        if not 0.0 <= self.latency_slack < math.inf:
            raise ValueError(f"latency_slack must be finite and >= 0, got {self.latency_slack}")


DEFAULT_COST_RANKING: Final = CostRankingPolicy()


def rank_by_cost_and_latency(
    scores: Sequence[ProviderScore],
    prices: Mapping[str, Price],
    usage_estimate: Usage,
    policy: CostRankingPolicy = DEFAULT_COST_RANKING,
) -> list[ProviderScore]:
    """``scores`` (the order of ``core.ranking.rank``) reordered by price as well: the
    healthy providers about as fast as the fastest, cheapest first; then the other
    healthy ones, then the cooling ones, each in the ranking's order. A provider missing
    from ``prices`` is free.
    """
    healthy = [s for s in scores if s.healthy]
    cooling = [s for s in scores if not s.healthy]
    if not healthy:
        return list(scores)
    fastest = min(s.expected_latency for s in healthy)
    bound = fastest * policy.max_slowdown + policy.latency_slack
    fast_enough = [(i, s) for i, s in enumerate(healthy) if s.expected_latency <= bound]
    slower = [s for s in healthy if s.expected_latency > bound]
    fast_enough.sort(
        key=lambda item: (
            cost_key(prices.get(item[1].peer_id, FREE), usage_estimate),
            item[1].expected_latency,
            item[0],
        )
    )
    return [s for _, s in fast_enough] + slower + cooling
