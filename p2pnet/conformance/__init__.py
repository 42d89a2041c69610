"""Protocol 1.0 conformance: the checks docs/protocol.md states with MUST and SHOULD, run
against any serving peer, p2pnet or not (``p2pnet conformance MULTIADDR``), or against
a client that calls a peer of its own (``--as-provider``).

Map:

- ``golden.py``: the golden vectors, shipped as package data in ``vectors/``
  (``invoke_v1.json``, ``describe_v1.json``, ``kad_v1.json``, ``records_v1.json``,
  ``receipts.json``); the codec tests read the same files. ``checks_v1.json`` holds the
  requests the checks send, by vector name or as heads, and what each must get.
- ``checks.py``: pure: ``Check`` (name, spec section, MUST or SHOULD), the data-driven
  ``Case``s, and the ``Verdict`` on what came back; no I/O.
- ``client.py``: ``run_checks``: sends the checks' requests to a peer over any
  ``StreamHost`` (libp2p, or the in-memory network) and collects the verdicts.
- ``provider.py``: ``--as-provider``: ``ClientObserver`` (pure) judges the bytes a
  client sends; ``ObservingHost`` shows it every invoke and describe stream of a serving
  peer; ``write_identity_model``, the model served when none is given.
"""
