"""Gateways: a running peer, and the network's models, reached by the tools people
already use (docs/gateway.md).

app.py        build_app, serve_http          the peer's HTTP app: the local API (status,
                                             find, call, ...), /metrics, the page, OIP,
                                             the OpenAI-style chat API and MCP, served by
                                             hypercorn
auth.py       TokenGuard, OPEN               who may call: the bearer token on every route
                                             but OPEN, loopback Host names on loopback
errors.py     http_status                    one error-to-status table for every gateway
metrics.py    PeerCollector, peer_registry   Prometheus metrics read from ``Peer.status()``,
                                             its call statistics and run slots at scrape time
page/         page_response, calls_reply     the status page (index.html, served at /) and
                                             /api/calls
client.py     ApiClient, ApiChat, ApiReply,  the local API's clients, which the command line
              BlockingApiClient              uses: httpx and trio (chat, generation,
                                             pipelines); the standard library's http.client
                                             without trio (find, call)
events.py     chunk_event, done_event, ...   the events of a streamed reply, as NDJSON lines
                                             and ``--json`` output
chats.py      ChatTable, Replies             chats and replies a peer holds for API clients
settings.py   DEFAULT_HTTP, write_token,     the default address, the token file, and the
              running_api                    running peer of an identity (no HTTP server
                                             loaded)
oip.py        oip_routes, ModelBackend,      the Open Inference Protocol v2 REST endpoints
              PeerBackend                    (KServe V2, Triton) as starlette routes; the
                                             tensor codec is p2pnet.core.oip
oip_grpc.py   serve_grpc, GRPC_STATUS        the Open Inference Protocol over gRPC
                                             (GRPCInferenceService), on the same backend
mcp.py        McpGateway, McpHttp,           the swarm's tasks as MCP tools: /mcp (Streamable
              serve_stdio, bridge_stdio      HTTP) and ``p2pnet mcp`` (stdio)
openai.py     openai_routes,                 the OpenAI-style chat API (/v1/models,
              parse_chat_request             /v1/chat/completions, server-sent events)
"""
