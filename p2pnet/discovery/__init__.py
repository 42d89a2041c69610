"""Finding models: which peers serve what, verified, and which of them to try first.

    describe.py   DESCRIBE_PROTOCOL, DescribeServer,      /p2pnet/describe/1.0.0: serve this
                  DescribeClient, DescribeResult,         peer's signed capability records;
                  RejectedRecord, DescribeServerStats     fetch and verify another peer's
    generation.py Generation, ChatSession, first_answer   streamed generation by task or
                                                          model, failing over before the
                                                          first chunk; conversations kept in
                                                          a provider's session, replayed
                                                          elsewhere when it is gone
    service.py    RecordPublisher, ModelFinder, Offer,    sign this peer's records; find by
                  Search                                  task or model, rank, call with
                                                          failover

The pure parts live in core: the describe messages in ``p2pnet.core.describe``,
provider ranking (EWMA latency, failure cooldown) in ``p2pnet.core.ranking``.
Discovery is one DHT provider lookup (``p2pnet.dht``, by model key or task key),
then at most one describe round trip to each provider found.
"""

from p2pnet.discovery.describe import (
    DESCRIBE_PROTOCOL,
    DescribeClient,
    DescribeResult,
    DescribeServer,
    DescribeServerStats,
    RejectedRecord,
)

__all__ = [
    "DESCRIBE_PROTOCOL",
    "DescribeClient",
    "DescribeResult",
    "DescribeServer",
    "DescribeServerStats",
    "RejectedRecord",
]
