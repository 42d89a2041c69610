"""The pure Kademlia core, after rust-libp2p's kad: decisions returned, time passed in.

    keys.py       Key, PeerInfo, key_of, distance, bucket_index,      the keyspace of the
                  key_for_model, key_for_task, closest_peers          libp2p kad-dht spec
    routing.py    RoutingTable; decisions Added, Refreshed,           256 k-buckets; a full
                  PingOldest, Evicted, Dropped, Ignored               bucket asks for a ping
    diversity.py  DiversityLimits, GroupOf, address_groups,           IP-group limits on the
                  reply_too_concentrated, GroupCounts                 table and on answers
    lookup.py     ClosestPeersLookup, DisjointLookup, PathClaims,     the iterative lookup,
                  LookupStats                                         over d disjoint paths
    store.py      ProviderStore, ValueStore, RecordValidator,         what a node stores for
                  StoredValue                                         others, with limits
    region.py     estimate_network_size, region_prefix_bits,     sybils near a key: the
                  density_verdict, DensityVerdict, SizeEstimator      region, the detector
    jobs.py       RepublishSchedule                                   when our records are due
    ratelimit.py  RateLimiter                                         per-peer token buckets
    wire.py       KadMessage, KadPeer, KadRecord, MessageType,        the kad-dht RPC messages
                  ConnectionType, KadLimits, KadMessageReader,        and their framing
                  encode_kad_message, peer_id_bytes, peer_id_text     (dht.proto -> dht_pb2.py
                                                                      via scripts/gen_proto.sh)

Nothing here does I/O, reads a clock or draws randomness of its own: the DHT service
sends the requests these objects ask for and reports back, passing ``now`` in.
"""

from p2pnet.core.kad.diversity import (
    DiversityLimits,
    GroupOf,
    address_groups,
    reply_too_concentrated,
)
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
from p2pnet.core.kad.lookup import ClosestPeersLookup, DisjointLookup, LookupStats, PathClaims
from p2pnet.core.kad.ratelimit import RateLimiter
from p2pnet.core.kad.region import (
    DensityVerdict,
    SizeEstimator,
    density_verdict,
    estimate_network_size,
    region_prefix_bits,
)
from p2pnet.core.kad.routing import (
    Added,
    Dropped,
    Evicted,
    Ignored,
    PingOldest,
    Refreshed,
    RoutingTable,
)
from p2pnet.core.kad.store import ProviderStore, RecordValidator, StoredValue, ValueStore
from p2pnet.core.kad.wire import (
    ConnectionType,
    KadLimits,
    KadMessage,
    KadMessageReader,
    KadPeer,
    KadRecord,
    MessageType,
    encode_kad_message,
    peer_id_bytes,
    peer_id_text,
)

__all__ = [
    "Added",
    "ClosestPeersLookup",
    "ConnectionType",
    "DensityVerdict",
    "DisjointLookup",
    "DiversityLimits",
    "Dropped",
    "Evicted",
    "GroupOf",
    "Ignored",
    "KadLimits",
    "KadMessage",
    "KadMessageReader",
    "KadPeer",
    "KadRecord",
    "Key",
    "LookupStats",
    "MessageType",
    "PathClaims",
    "PeerInfo",
    "PingOldest",
    "ProviderStore",
    "RateLimiter",
    "RecordValidator",
    "Refreshed",
    "RepublishSchedule",
    "RoutingTable",
    "SizeEstimator",
    "StoredValue",
    "ValueStore",
    "address_groups",
    "bucket_index",
    "closest_peers",
    "density_verdict",
    "distance",
    "encode_kad_message",
    "estimate_network_size",
    "key_for_model",
    "key_for_task",
    "key_of",
    "peer_id_bytes",
    "peer_id_text",
    "region_prefix_bits",
    "reply_too_concentrated",
]
