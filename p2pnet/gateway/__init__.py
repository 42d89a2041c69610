"""Gateways: a running peer reached over HTTP by the tools people already use
(docs/gateways.md).

app.py        build_app, serve_http          the local HTTP API of a peer (status, find,
                                             call) and /metrics, served by hypercorn
metrics.py    PeerCollector, peer_registry   Prometheus metrics read from ``Peer.status()``
                                             at scrape time
settings.py   DEFAULT_HTTP, write_token,     the default address and the token file (no
              default_token_path             HTTP server loaded)
"""
