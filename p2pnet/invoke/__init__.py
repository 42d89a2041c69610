"""Calling models: the invoke protocol, ``/p2pnet/invoke/1.0.0`` (docs/protocol.md), over
``p2pnet.net`` streams, and the ``Invoker`` interface with its local and remote sides.

protocol.py   INVOKE_PROTOCOL, read_message, write_message   shared stream I/O
local.py      Invoker, LocalInvoker, Invokers, send_forward  runs served models here; picks the
                                                             invoker per peer; carries forwarded
                                                             pipelines from hop to hop
client.py     InvokeClient, CallObserver,                    the remote Invoker: calls peers,
              GenerationStream                               reuses their streams; streamed
                                                             generations and their sessions
server.py     InvokeServer, ServerStats                      answers calls through LocalInvoker
"""
