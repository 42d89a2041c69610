"""Gateways: the network's models behind the protocols other software speaks, served
over HTTP inside a running peer (docs/gateways.md).

oip.py    oip_routes, ModelBackend, PeerBackend,    the Open Inference Protocol v2 REST
          status_of                                 endpoints (KServe V2, Triton) as
                                                    starlette routes; the tensor codec is
                                                    p2pnet.core.oip
"""
