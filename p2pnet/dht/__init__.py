"""The DHT node: the sans-IO Kademlia core (``p2pnet.core.kad``) driven over streams.

node.py   DhtNode, DhtConfig, LookupResult,     /p2pnet/kad/1.0.0 on any StreamHost:
          KadOverride, RequestInterceptor       answer, look up, provide, republish,
                                                refresh; ``intercept`` is its declared hook
"""
