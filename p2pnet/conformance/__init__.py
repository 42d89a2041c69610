"""Protocol 1.0 conformance (docs/protocol.md).

Map:

- ``golden.py``: the golden vectors, shipped as package data in ``vectors/``
  (``invoke_v1.json``, ``describe_v1.json``, ``kad_v1.json``, ``records_v1.json``,
  ``receipts.json``); the codec tests read the same files.
"""
