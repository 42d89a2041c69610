"""One attribute of a py-libp2p class or module replaced by p2pnet's, once.

The net layer's workarounds (``multistream.py``, ``noise_writes.py``, ``notifees.py``,
``tcp_reads.py``, ``yamux_calls.py``, ``yamux_window.py``) each put a function of their own where
py-libp2p has one; installing one twice must change nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["replace_attribute"]


def replace_attribute(owner: Any, name: str, replacement: Any) -> None:
    """Set ``owner.name`` to ``replacement`` unless it already is; idempotent."""
    if getattr(owner, name, None) is not replacement:
        setattr(owner, name, replacement)
