"""What a DHT node stores for others (expiry, limits, validation), republish timing, rate limits."""

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnet.core.kad.jobs import RepublishSchedule
from p2pnet.core.kad.keys import PeerInfo
from p2pnet.core.kad.ratelimit import RateLimiter
from p2pnet.core.kad.store import ProviderStore, StoredValue, ValueStore
from p2pnet.errors import (
    MalformedRecordError,
    PeerError,
    ProviderQuotaError,
    RecordTooLargeError,
    StaleRecordError,
    StoreFullError,
    StoreLimitError,
)

ALICE = PeerInfo("alice", b"\x00\x24alice", ("/ip4/10.0.0.1/tcp/1",))
BOB = PeerInfo("bob", b"\x00\x24bob", ("/ip4/10.0.0.2/tcp/1",))
CAROL = PeerInfo("carol", b"\x00\x24carol")
MODEL_KEY = b"/p2pnet/model/bafkrei-example"


def test_providers_are_returned_until_they_expire() -> None:
    store = ProviderStore()
    store.add(MODEL_KEY, ALICE, now=0, ttl=100)
    store.add(MODEL_KEY, BOB, now=50, ttl=100)
    assert store.get(MODEL_KEY, now=99) == [ALICE, BOB]
    assert store.get(MODEL_KEY, now=100) == [BOB]  # expires_at is exclusive
    assert store.get(b"other", now=0) == []
    assert store.expire(now=100) == 1
    assert store.expire(now=150) == 1
    assert len(store) == 0 and store.keys() == []


def test_announcing_again_extends_and_keeps_known_addresses() -> None:
    store = ProviderStore()
    store.add(MODEL_KEY, ALICE, now=0, ttl=100)
    store.add(MODEL_KEY, PeerInfo("alice", ALICE.key), now=90, ttl=100)
    assert store.get(MODEL_KEY, now=150) == [ALICE]


def test_provider_limit_per_key_counts_live_providers_only() -> None:
    store = ProviderStore(max_providers_per_key=2)
    store.add(MODEL_KEY, ALICE, now=0, ttl=10)
    store.add(MODEL_KEY, BOB, now=0, ttl=100)
    with pytest.raises(StoreFullError, match="already has 2 providers"):
        store.add(MODEL_KEY, CAROL, now=5, ttl=100)
    store.add(MODEL_KEY, ALICE, now=5, ttl=100)  # a known provider may always refresh
    store.add(MODEL_KEY, CAROL, now=105, ttl=100)  # both expired: room again
    assert store.get(MODEL_KEY, now=105) == [CAROL]


def test_key_limit() -> None:
    store = ProviderStore(max_keys=2)
    store.add(b"a", ALICE, now=0, ttl=10)
    store.add(b"b", ALICE, now=0, ttl=10)
    store.add(b"b", BOB, now=0, ttl=10)  # an existing key takes more providers
    with pytest.raises(StoreFullError, match="2 keys"):
        store.add(b"c", BOB, now=0, ttl=10)
    store.expire(now=10)
    store.add(b"c", BOB, now=10, ttl=10)


def test_one_provider_cannot_fill_the_store() -> None:
    store = ProviderStore(max_keys_per_provider=2)
    store.add(b"a", ALICE, now=0, ttl=10)
    store.add(b"b", ALICE, now=0, ttl=10)
    with pytest.raises(ProviderQuotaError, match="alice already provides 2 keys"):
        store.add(b"c", ALICE, now=0, ttl=10)
    store.add(b"c", BOB, now=0, ttl=10)
    assert store.remove(b"a", ALICE.key) and not store.remove(b"a", ALICE.key)
    store.add(b"c", ALICE, now=0, ttl=10)


def test_limit_errors_are_peer_errors_with_codes() -> None:
    for cls in (StoreFullError, ProviderQuotaError):
        assert issubclass(cls, StoreLimitError) and issubclass(cls, PeerError)
    assert (StoreFullError.code, ProviderQuotaError.code) == ("store_full", "provider_quota")


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"a", b"b", b"c", b"d"]),
            st.sampled_from([ALICE, BOB, CAROL]),
            st.integers(0, 50),
            st.integers(1, 30),
        ),
        max_size=60,
    )
)
def test_provider_store_never_returns_expired_or_exceeds_limits(
    adds: list[tuple[bytes, PeerInfo, int, int]],
) -> None:
    store = ProviderStore(max_providers_per_key=2, max_keys=3, max_keys_per_provider=2)
    expiry: dict[tuple[bytes, bytes], int] = {}
    now = 0
    for key, peer, step, ttl in adds:
        now += step
        try:
            store.add(key, peer, now, ttl)
            expiry[key, peer.key] = now + ttl
        except StoreLimitError:
            pass
        assert len(store) <= 3
        for k in store.keys():
            live = store.get(k, now)
            assert len(live) <= 2
            assert all(expiry[k, p.key] > now for p in live)


class SequenceValidator:
    """Values are b"<seq>:<payload>"; the higher sequence wins; no colon is malformed."""

    def validate(self, key: bytes, value: bytes) -> None:
        if b":" not in value:
            raise MalformedRecordError(f"value for {key!r} has no sequence number")

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        seqs = [int(v.split(b":")[0]) for v in values]
        return seqs.index(max(seqs))


def test_value_store_keeps_the_better_value() -> None:
    store = ValueStore(SequenceValidator())
    store.put(b"k", b"1:old", "alice", now=0, ttl=100)
    store.put(b"k", b"2:new", "bob", now=1, ttl=100)
    assert store.get(b"k", now=2) == StoredValue(b"2:new", 101, "bob")
    with pytest.raises(StaleRecordError, match="older than the one this node holds"):
        store.put(b"k", b"1:old", "alice", now=3, ttl=100)
    store.put(b"k", b"2:new", "carol", now=50, ttl=100)  # the same value: extended
    assert store.get(b"k", now=120) == StoredValue(b"2:new", 150, "carol")


def test_value_store_rejects_invalid_and_oversized_values() -> None:
    store = ValueStore(SequenceValidator(), max_value_bytes=8)
    with pytest.raises(MalformedRecordError):
        store.put(b"k", b"noseq", "alice", now=0, ttl=10)
    with pytest.raises(RecordTooLargeError, match="9 bytes"):
        store.put(b"k", b"1:toolong", "alice", now=0, ttl=10)
    store.put(b"k", b"1:fits", "alice", now=0, ttl=10)
    assert len(store) == 1


def test_value_store_expiry_and_key_limit() -> None:
    store = ValueStore(SequenceValidator(), max_keys=1)
    store.put(b"a", b"5:x", "alice", now=0, ttl=10)
    with pytest.raises(StoreFullError):
        store.put(b"b", b"1:y", "alice", now=0, ttl=10)
    assert store.get(b"a", now=10) is None
    store.put(b"a", b"1:older-but-the-held-one-expired", "bob", now=10, ttl=10)
    assert store.expire(now=20) == 1 and len(store) == 0
    store.put(b"b", b"1:y", "alice", now=20, ttl=10)
    assert store.remove(b"b") and not store.remove(b"b")


# --- Republish schedule ---------------------------------------------------------------------


def test_republish_interval_must_be_below_the_ttl() -> None:
    with pytest.raises(ValueError, match="below the record TTL"):
        RepublishSchedule(interval=100, ttl=100)


def test_keys_fall_due_again_after_each_announcement() -> None:
    schedule = RepublishSchedule(interval=100, ttl=250, retry_delay=10)
    schedule.add(b"a", now=0)
    schedule.add(b"b", now=5)
    assert schedule.due(now=4) == [b"a"]
    assert schedule.due(now=5) == [b"a", b"b"]
    schedule.published(b"a", now=6)
    schedule.failed(b"b", now=6)
    assert schedule.due(now=15) == [] and schedule.next_due() == 16
    assert schedule.due(now=106) == [b"b", b"a"]  # longest overdue first
    schedule.remove(b"b")
    schedule.published(b"b", now=106)  # no longer ours: ignored
    assert b"b" not in schedule and len(schedule) == 1
    assert RepublishSchedule().next_due() is None


# --- Rate limiter ---------------------------------------------------------------------------


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=2, burst=3)
    assert [limiter.allow("alice", now=0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("bob", now=0)  # peers are independent
    assert limiter.allow("alice", now=0.5) and not limiter.allow("alice", now=0.5)
    assert [limiter.allow("alice", now=100) for _ in range(4)] == [True, True, True, False]


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(rate=1, burst=2, max_peers=2)
    limiter.allow("a", now=0)
    limiter.allow("b", now=1)
    limiter.allow("c", now=1)
    assert len(limiter) == 2
    assert limiter.forget_idle(now=2.5) == 0  # b and c have not refilled yet
    assert limiter.forget_idle(now=3) == 2 and len(limiter) == 0
