"""Output shared by the commands: the consoles, tables of model schemas and of output
tensors, tensors as JSON.

Text from other peers (model and tensor names, output values) is printed escaped: rich
would take a ``[...]`` in it for markup, and an unmatched ``[/...]`` fails the print."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from p2pnet.core.model_info import ModelInfo
from p2pnet.core.tensor import dtype_name

__all__ = ["err", "figure", "out", "outputs_table", "schema_table", "tensor_json"]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def tensor_json(arr: npt.NDArray[Any]) -> dict[str, Any]:
    """A tensor as JSON: dtype, shape and data."""
    return {"dtype": dtype_name(arr), "shape": list(arr.shape), "data": arr.tolist()}


def schema_table(info: ModelInfo) -> Table:
    """A model's inputs and outputs: name, dtype and shape (``?`` for a free dimension)."""
    table = Table(title=f"{info.name} ({info.size:,} bytes)", title_justify="left")
    for column in ("", "name", "dtype", "shape"):
        table.add_column(column)
    for kind, specs in (("input", info.schema.inputs), ("output", info.schema.outputs)):
        for spec in specs:
            dims = ", ".join("?" if d is None else str(d) for d in spec.shape)
            table.add_row(kind, spec.name, spec.dtype, f"[{dims}]")
    return table


def outputs_table(title: str, outputs: Mapping[str, npt.NDArray[Any]]) -> Table:
    """Output tensors: name, dtype, shape and values (long ones elided); the title, names
    and values are text, not markup."""
    table = Table(title=escape(title), title_justify="left")
    for column in ("output", "dtype", "shape", "value"):
        table.add_column(column)
    with np.printoptions(threshold=20, edgeitems=3, precision=4, suppress=True):
        for name, arr in outputs.items():
            table.add_row(escape(name), dtype_name(arr), str(list(arr.shape)), escape(str(arr)))
    return table


def figure(value: float | None, fmt: str) -> str:
    """``value`` in ``fmt``, or ``-`` for none."""
    return "-" if value is None else format(value, fmt)
