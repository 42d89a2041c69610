"""The ``p2pnet`` command (docs/cli.md): argument parsing and output over the library.

Each command turns its parsed arguments into a frozen dataclass of typed options once,
and its code takes that; what is not about the command line lives in the library.

    app.py        main: parse, run the command, map errors to exit statuses (0, 1, 2, 130)
    __main__.py   ``python -m p2pnet.cli``
    parser.py     build_parser: the top-level parser, composed of the commands' parsers
    options.py    Command, the parent parsers several commands share and their typed
                  options (SwarmOptions, DiscoveryOptions, generation_params), the
                  identity file
    render.py     the consoles, tables of schemas and outputs, tensors as JSON, errors
    stream.py     streamed replies of generative models (text or JSON events), Ctrl-C
    id.py         p2pnet id
    model.py      p2pnet model inspect | import | quantize
    peer.py       p2pnet peer
    call.py       p2pnet call
    chat.py       p2pnet chat
    find.py       p2pnet find
    mcp.py        p2pnet mcp
    pipeline.py   p2pnet pipeline check | run
    swarm_key.py  p2pnet swarm-key new | fingerprint
    status.py     p2pnet status
    ledger.py     p2pnet ledger [receipts | export | verify]
    trust.py      p2pnet trust [forget PEER]
    simulate.py   p2pnet simulate
    conformance.py  p2pnet conformance: check a peer or a client against Protocol 1.0
"""

from p2pnet.cli.app import main

__all__ = ["main"]
