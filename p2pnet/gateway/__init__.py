"""Gateways: a running peer, and the network's models, reached over HTTP by the tools
people already use (docs/gateways.md).

app.py        build_app, serve_http          the local HTTP API of a peer (status, find,
                                             call) and /metrics, served by hypercorn
metrics.py    PeerCollector, peer_registry   Prometheus metrics read from ``Peer.status()``,
                                             its call statistics and run slots at scrape time
page/         page_response, calls_reply     the status page (index.html, served at /) and
                                             /api/calls
settings.py   DEFAULT_HTTP, write_token,     the default address and the token file (no
              default_token_path             HTTP server loaded)
oip.py        oip_routes, ModelBackend,      the Open Inference Protocol v2 REST endpoints
              PeerBackend, status_of         (KServe V2, Triton) as starlette routes; the
                                             tensor codec is p2pnet.core.oip
oip_grpc.py   serve_grpc, GRPC_STATUS        the Open Inference Protocol over gRPC
                                             (GRPCInferenceService), on the same backend
"""
