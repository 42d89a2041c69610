"""What a DHT node stores for others: provider records and values, with expiry and limits.

Both stores are plain dicts with times passed in. Expired entries are never
returned; ``expire(now)`` frees their memory and their place under the limits, and
is meant to run periodically (the spec suggests hourly). Limits never trigger a scan,
so a full store costs nothing to refuse. Every limit refusal raises a ``StoreLimitError`` that names
the limit, so the driver can log it and drop the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from p2pnet.core.kad.keys import PeerInfo
from p2pnet.errors import (
    ProviderQuotaError,
    RecordTooLargeError,
    StaleRecordError,
    StoreFullError,
)

__all__ = [
    "DEFAULT_PROVIDER_TTL",
    "DEFAULT_VALUE_TTL",
    "ProviderStore",
    "RecordValidator",
    "StoredValue",
    "ValueStore",
]

DEFAULT_PROVIDER_TTL: Final = 24 * 3600.0  # the kad-dht spec's default for provider records
# Protocol 1.0 has one TTL for values, as for providers (go-libp2p-kad-dht keeps values
# 36 h, its MaxRecordAge; a capability record lives 24 h anyway).
DEFAULT_VALUE_TTL: Final = 24 * 3600.0


# --- Providers ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Provider:
    peer: PeerInfo
    expires_at: float


class ProviderStore:
    """Key -> the peers that announced they provide it, each until an expiry time.

    max_providers_per_key: providers kept per key (k in the spec).
    max_keys: distinct keys kept.
    max_keys_per_provider: keys one peer may be a provider of here, so a single peer
        cannot fill the store.
    """

    def __init__(
        self,
        *,
        max_providers_per_key: int = 20,
        max_keys: int = 65536,
        max_keys_per_provider: int = 1024,
    ) -> None:
        self.max_providers_per_key = max_providers_per_key
        self.max_keys = max_keys
        self.max_keys_per_provider = max_keys_per_provider
        self._providers: dict[bytes, dict[bytes, _Provider]] = {}  # key -> peer key -> entry
        self._keys_of: dict[bytes, set[bytes]] = {}  # peer key -> keys it provides

    def add(self, key: bytes, provider: PeerInfo, now: float, ttl: float) -> None:
        """Record ``provider`` for ``key`` until ``now + ttl``; a repeat refreshes it.

        Raises:
            StoreFullError: ``key`` already has ``max_providers_per_key`` live
                providers, or the store holds ``max_keys`` keys.
            ProviderQuotaError: ``provider`` already provides ``max_keys_per_provider`` keys.
        """
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        providers = self._providers.get(key)
        if providers is not None:
            self._drop_expired(key, providers, now)
            known = providers.get(provider.key)
            if known is not None:
                known.peer = provider if provider.addrs else known.peer
                known.expires_at = now + ttl
                return
            if len(providers) >= self.max_providers_per_key:
                raise StoreFullError(
                    f"key {key!r} already has {len(providers)} providers, the most this node "
                    "keeps per key"
                )
        elif len(self._providers) >= self.max_keys:
            raise StoreFullError(f"this node already stores providers for {self.max_keys} keys")
        provided = self._keys_of.get(provider.key, set())
        if len(provided) >= self.max_keys_per_provider:
            raise ProviderQuotaError(
                f"peer {provider.peer_id} already provides {len(provided)} keys here, the most "
                "this node keeps per provider"
            )
        self._providers.setdefault(key, {})[provider.key] = _Provider(provider, now + ttl)
        self._keys_of.setdefault(provider.key, set()).add(key)

    def get(self, key: bytes, now: float) -> list[PeerInfo]:
        """The live providers of ``key``, in the order they first announced."""
        providers = self._providers.get(key, {})
        return [p.peer for p in providers.values() if p.expires_at > now]

    def remove(self, key: bytes, provider_key: bytes) -> bool:
        """Forget one provider of ``key``; True if it was there."""
        providers = self._providers.get(key)
        if providers is None or providers.pop(provider_key, None) is None:
            return False
        self._forget(key, provider_key)
        if not providers:
            del self._providers[key]
        return True

    def expire(self, now: float) -> int:
        """Drop every expired provider; returns how many."""
        dropped = 0
        for key in list(self._providers):
            dropped += self._drop_expired(key, self._providers[key], now)
        return dropped

    def keys(self) -> list[bytes]:
        """Keys with at least one provider stored (expired ones included until ``expire``)."""
        return list(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    def _drop_expired(self, key: bytes, providers: dict[bytes, _Provider], now: float) -> int:
        expired = [pk for pk, p in providers.items() if p.expires_at <= now]
        for provider_key in expired:
            del providers[provider_key]
            self._forget(key, provider_key)
        if not providers:
            del self._providers[key]
        return len(expired)

    def _forget(self, key: bytes, provider_key: bytes) -> None:
        provided = self._keys_of[provider_key]
        provided.discard(key)
        if not provided:
            del self._keys_of[provider_key]


# --- Values ---------------------------------------------------------------------------------


class RecordValidator(Protocol):
    """Decides which values a ValueStore accepts, as the spec's Validator does."""

    def validate(self, key: bytes, value: bytes) -> None:
        """Raise an ``InvalidRecordError`` subclass if ``value`` must not be stored."""

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """Index of the best of ``values`` (all valid), e.g. the highest sequence number.

        Must be stable: the same values give the same answer.
        """


@dataclass(frozen=True, slots=True)
class StoredValue:
    """A value held for ``key``: who sent it and until when it is kept."""

    value: bytes
    expires_at: float
    publisher: str


class ValueStore:
    """Key -> the best value received for it, checked by ``validator``.

    max_value_bytes: largest value accepted.
    max_keys: distinct keys kept.
    """

    def __init__(
        self,
        validator: RecordValidator,
        *,
        max_value_bytes: int = 64 << 10,
        max_keys: int = 65536,
    ) -> None:
        self.validator = validator
        self.max_value_bytes = max_value_bytes
        self.max_keys = max_keys
        self._values: dict[bytes, StoredValue] = {}

    def put(self, key: bytes, value: bytes, publisher: str, now: float, ttl: float) -> None:
        """Store ``value`` for ``key`` until ``now + ttl``, unless a better one is held.

        The same value again only extends its expiry.

        Raises:
            RecordTooLargeError: ``value`` is over ``max_value_bytes``.
            InvalidRecordError: (a subclass) the validator rejects ``value``.
            StaleRecordError: the validator prefers the value already held.
            StoreFullError: ``key`` is new and the store holds ``max_keys`` keys.
        """
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        if len(value) > self.max_value_bytes:
            raise RecordTooLargeError(
                f"value of {len(value)} bytes for key {key!r}; this node stores at most "
                f"{self.max_value_bytes} bytes per value"
            )
        self.validator.validate(key, value)
        held = self.get(key, now)
        if held is not None:
            if held.value != value and self.validator.select(key, [held.value, value]) == 0:
                raise StaleRecordError(
                    f"the value for key {key!r} is older than the one this node holds"
                )
        elif key not in self._values and len(self._values) >= self.max_keys:
            raise StoreFullError(f"this node already stores values for {self.max_keys} keys")
        self._values[key] = StoredValue(value, now + ttl, publisher)

    def get(self, key: bytes, now: float) -> StoredValue | None:
        """The value held for ``key``, or None if none or expired."""
        stored = self._values.get(key)
        return stored if stored is not None and stored.expires_at > now else None

    def remove(self, key: bytes) -> bool:
        """Forget the value of ``key``; True if one was held."""
        return self._values.pop(key, None) is not None

    def expire(self, now: float) -> int:
        """Drop every expired value; returns how many."""
        expired = [k for k, v in self._values.items() if v.expires_at <= now]
        for key in expired:
            del self._values[key]
        return len(expired)

    def __len__(self) -> int:
        return len(self._values)
