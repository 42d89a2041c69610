"""The pure Kademlia core, after rust-libp2p's kad: decisions returned, time passed in.

    keys.py       Key, PeerInfo, key_of, distance, bucket_index,      the keyspace of the
                  key_for_model, key_for_task, closest_peers          libp2p kad-dht spec
    routing.py    RoutingTable; decisions Added, Refreshed,           256 k-buckets; a full
                  PingOldest, Evicted, Ignored                        bucket asks for a ping
    lookup.py     ClosestPeersLookup, LookupStats                     the iterative lookup
    store.py      ProviderStore, ValueStore, RecordValidator,         what a node stores for
                  StoredValue, StoreLimitError and subclasses         others, with limits
    jobs.py       RepublishSchedule                                   when our records are due
    ratelimit.py  RateLimiter                                         per-peer token buckets

Nothing here does I/O, reads a clock or draws randomness of its own: the DHT service
sends the requests these objects ask for and reports back, passing ``now`` in.
"""

from p2pnet.core.kad.jobs import RepublishSchedule
from p2pnet.core.kad.keys import (
    Key,
    PeerInfo,
    bucket_index,
    closest_peers,
    distance,
    key_for_model,
    key_for_task,
    key_of,
)
from p2pnet.core.kad.lookup import ClosestPeersLookup, LookupStats
from p2pnet.core.kad.ratelimit import RateLimiter
from p2pnet.core.kad.routing import (
    Added,
    Evicted,
    Ignored,
    PingOldest,
    Refreshed,
    RoutingTable,
)
from p2pnet.core.kad.store import (
    ProviderQuotaError,
    ProviderStore,
    RecordValidator,
    StoredValue,
    StoreFullError,
    StoreLimitError,
    ValueStore,
)

__all__ = [
    "Added",
    "ClosestPeersLookup",
    "Evicted",
    "Ignored",
    "Key",
    "LookupStats",
    "PeerInfo",
    "PingOldest",
    "ProviderQuotaError",
    "ProviderStore",
    "RateLimiter",
    "RecordValidator",
    "Refreshed",
    "RepublishSchedule",
    "RoutingTable",
    "StoreFullError",
    "StoreLimitError",
    "StoredValue",
    "ValueStore",
    "bucket_index",
    "closest_peers",
    "distance",
    "key_for_model",
    "key_for_task",
    "key_of",
]
