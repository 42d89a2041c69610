"""The golden vectors of Protocol 1.0 (docs/protocol.md), shipped with the package: the
tests check the codecs against them and the conformance checker sends and expects
them, so the spec, the tests and the checker read the same bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

__all__ = ["VECTOR_DIR", "load_vectors", "vector"]

VECTOR_DIR: Final = Path(__file__).parent / "vectors"


def load_vectors(name: str) -> dict[str, Any]:
    """The parsed ``vectors/<name>.json`` (``invoke_v1``, ``kad_v1``, ``describe_v1``,
    ``records_v1``, ``receipts``, ``checks_v1``).

    Raises:
        FileNotFoundError: no such vector file.
    """
    data: dict[str, Any] = json.loads((VECTOR_DIR / f"{name}.json").read_text())
    return data


def vector(vectors: dict[str, Any], name: str) -> dict[str, Any]:
    """The entry called ``name`` of a vector file's ``vectors`` list.

    Raises:
        KeyError: no vector of that name.
    """
    for entry in vectors["vectors"]:
        if entry["name"] == name:
            found: dict[str, Any] = entry
            return found
    raise KeyError(f"no golden vector {name!r}")
