"""The invoke protocol, ``/p2pnet/invoke/1.0.0`` (docs/protocol.md), over ``p2pnet.net`` streams.

protocol.py   INVOKE_PROTOCOL, read_message, write_message   shared stream I/O
server.py     InvokeServer, ServerStats                      answers calls with model outputs
client.py     InvokeClient                                   calls peers, reuses their streams
"""
