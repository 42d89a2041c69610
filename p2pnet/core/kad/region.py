"""A key's region and the density of the peers closest to it, after Sridhar et al.
(NDSS 2024, "Content Censorship in the InterPlanetary File System").

A sybil attacker who grinds IDs next to a key holds its k closest slots, so storing to
and asking only the k closest hands the key to the attacker. Two defences, both pure:

- the **region** of a key: every peer sharing at least ``ceil(log2(N / k)) - 1`` leading
  bits with it, where N is the network size. In a network of N random IDs that is
  ~k..2k peers; sybils add to it but cannot push the honest ones out, so records are
  stored on, and looked up from, the whole region (always, not only under attack).
- the **density detector**: the common-prefix lengths (CPLs) of the k closest peers to
  a random key follow a distribution that depends on N only. Sybils make them longer.
  The Kullback-Leibler divergence between the observed CPL histogram and the expected
  one is the statistic; above ``threshold`` a lookup is called suspicious.

N is estimated (``estimate_network_size``) from the distances of the closest peers
to a key: the i-th closest of N uniformly random IDs is at expected normalised XOR
distance i / (N + 1), and a least-squares line through the origin gives N. One such
estimate is noisy (from 20 peers, its standard deviation is ~25-35% of N), and a low
one makes every honest key look dense: judged against single estimates from a peer's
own neighbourhood, 4-7% of honest keys raise an alarm at N = 300..3,000. A
``SizeEstimator`` keeps the estimates of the last 12 lookups that ran their course (our
own ID's, bucket refreshes' random keys, content keys) and answers their median: its
spread is ~7-10% of N and the false alarms fall under 3%. Twelve is about one refresh
round (our own ID and a lookup per bucket, every ``refresh_interval``), so the
estimate follows a network that grows instead of holding the size it had when we
joined. The median ignores the few estimates that sybils near some key inflate.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from p2pnet.core.kad.keys import KEY_BITS, Key, common_prefix_length

__all__ = [
    "DEFAULT_DENSITY_THRESHOLD",
    "DensityVerdict",
    "SizeEstimator",
    "density_verdict",
    "estimate_network_size",
    "expected_prefix_lengths",
    "in_region",
    "region_prefix_bits",
]

# Chosen from tests/test_kad_region.py's measurement (false alarms < 5% at k = 20 for
# N = 100..100,000, sybils at log2(N) + 6 bits caught); the paper used 0.94.
DEFAULT_DENSITY_THRESHOLD = 0.94
_FLOOR = 1e-6  # a probability never below this in the divergence (no infinite KL)


def estimate_network_size(target: Key, closest: Sequence[Key]) -> float | None:
    """The network size that the ``closest`` peers' distances to ``target`` suggest.

    ``closest`` should be the closest peers known to ``target`` (any order): their
    i-th smallest normalised distance x_i is expected at i / (N + 1), so
    ``N = sum(i * i) / sum(i * x_i) - 1`` (least squares through the origin). None with
    fewer than 3 peers: too few to say anything.
    """
    if len(closest) < 3:
        return None
    scale = float(1 << KEY_BITS)
    xs = sorted((p ^ target) / scale for p in closest)
    num = sum(i * i for i in range(1, len(xs) + 1))
    den = sum(i * x for i, x in enumerate(xs, start=1))
    if den <= 0.0:
        return None
    return max(float(len(xs)), num / den - 1.0)


class SizeEstimator:
    """The median of the last ``keep`` network-size estimates (see the module docstring;
    12: about one refresh round).

    Pure: no clock, no I/O. ``add`` takes one lookup's estimate; ``value`` is None until
    one was added.
    """

    def __init__(self, keep: int = 12) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self._samples: deque[float] = deque(maxlen=keep)

    def add(self, target: Key, closest: Sequence[Key]) -> float | None:
        """Add the estimate ``closest`` (the k closest peers found to ``target``) gives;
        returns it, or None (too few peers: nothing added)."""
        size = estimate_network_size(target, closest)
        if size is not None:
            self._samples.append(size)
        return size

    @property
    def samples(self) -> int:
        return len(self._samples)

    def value(self) -> float | None:
        """The median estimate, or None while there is none."""
        return statistics.median(self._samples) if self._samples else None


def region_prefix_bits(network_size: float, k: int = 20) -> int:
    """Leading bits a peer must share with a key to be in its region: ``ceil(log2(N/k)) - 1``
    (0, everyone, for a network of at most 2k peers)."""
    if network_size <= 2 * k:
        return 0
    return max(0, math.ceil(math.log2(network_size / k)) - 1)


def in_region(target: Key, peer: Key, bits: int) -> bool:
    """True if ``peer`` shares at least ``bits`` leading bits with ``target``."""
    return common_prefix_length(target, peer) >= bits


def _expected_min(k: int, lam: float) -> float:
    """E[min(k, X)] for X ~ Poisson(lam): sum over j < k of P(X > j)."""
    if lam <= 0.0:
        return 0.0
    term = math.exp(-lam)  # P(X = 0)
    cdf = term
    total = 0.0
    for j in range(k):
        total += max(0.0, 1.0 - cdf)
        term *= lam / (j + 1)
        cdf += term
    return total


def expected_prefix_lengths(network_size: float, k: int = 20) -> list[float]:
    """The expected share of the k closest peers to a random key with each CPL 0, 1, ...

    With N random IDs the number sharing at least c bits with the key is
    Binomial(N, 2**-c) (Poisson for c >= 1 here), and the k closest hold ``min(k, X_c)`` of them,
    so the share at exactly c is ``(E min(k, X_c) - E min(k, X_{c+1})) / k``.
    """
    shares: list[float] = []
    c = 0
    above = min(float(k), network_size)  # every peer shares at least 0 bits
    while True:
        below = _expected_min(k, network_size * 2.0 ** -(c + 1))
        shares.append((above - below) / k)
        if below < 1e-9 or c >= KEY_BITS - 1:
            return shares
        above = below
        c += 1


@dataclass(frozen=True, slots=True)
class DensityVerdict:
    """Whether the peers closest to a key are closer than the network size predicts.

    suspicious: ``divergence > threshold``. divergence: KL(observed || expected) of the
    closest peers' CPLs, in nats. network_size: the estimate it was judged against.
    peers: how many closest peers were judged.
    """

    suspicious: bool
    divergence: float
    network_size: float
    peers: int


def density_verdict(
    network_size: float,
    prefix_lengths: Sequence[int],
    *,
    k: int = 20,
    threshold: float = DEFAULT_DENSITY_THRESHOLD,
) -> DensityVerdict:
    """Judge the CPLs of the (up to ``k``) closest peers found to a key against what a
    network of ``network_size`` random IDs gives.

    Raises:
        ValueError: no prefix length given, or ``k`` below 1.
    """
    if not prefix_lengths:
        raise ValueError("the density of no peers cannot be judged")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    observed = sorted(prefix_lengths, reverse=True)[:k]
    expected = expected_prefix_lengths(network_size, k)
    counts: dict[int, int] = {}
    for cpl in observed:
        counts[cpl] = counts.get(cpl, 0) + 1
    n = len(observed)
    divergence = 0.0
    for cpl, count in counts.items():
        p = count / n
        q = expected[cpl] if cpl < len(expected) else 0.0
        divergence += p * math.log(p / max(q, _FLOOR))
    divergence = max(0.0, divergence)
    return DensityVerdict(divergence > threshold, divergence, network_size, n)
