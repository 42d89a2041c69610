"""Output shared by the commands: the consoles, text from other peers made safe for the
terminal (a streamed reply's text too), shapes, tables of model schemas and of output
tensors, tensors as JSON, errors and their exit statuses.

Text from other peers (record and tensor names, tasks, dtypes, symbolic dimensions, peer
IDs, addresses, error messages, output values) reaches the terminal only through
``terminal_safe`` or ``peer_text``: it is never read as rich markup (a ``[...]`` in it
would restyle the output, an unmatched ``[/...]`` fail the print), and its control
characters (escape sequences, carriage returns, bidirectional overrides) are shown as
``\\x1b`` or ``\\u202e`` instead of being sent to the terminal. Commands build rich
``Text`` objects, which rich never parses as markup, rather than markup strings."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from rich.console import Console
from rich.text import Text

from p2pnet.errors import P2PNetError, UsageError

# numpy and rich's tables are imported by the functions that show tensors and tables: a
# command that prints neither (``p2pnet find --json``, ``--help``) loads neither.
if TYPE_CHECKING:
    import numpy.typing as npt
    from rich.table import Table

    from p2pnet.core.generation import GenerationCard
    from p2pnet.core.model_info import ModelInfo
    from p2pnet.core.schema import Dim

__all__ = [
    "MAX_ERROR_CHARS",
    "MAX_NAME_CHARS",
    "SpecLike",
    "TerminalSafeLogs",
    "err",
    "error_text",
    "exit_status",
    "figure",
    "joined_text",
    "out",
    "outputs_table",
    "peer_text",
    "reply_safe",
    "schema_table",
    "shape_text",
    "spec_text",
    "tensor_json",
    "terminal_safe",
]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# Characters shown as escapes rather than sent to the terminal: C0 controls (tab
# and newline included: a name is one line), DEL, C1 controls (0x9b is a one-byte CSI on
# some terminals), the Arabic letter mark, LRM/RLM, the line and paragraph separators,
# and the bidirectional embeddings, overrides and isolates that reorder what follows.
_UNSAFE_CODEPOINTS: Final = (
    *range(0x00, 0x20),
    *range(0x7F, 0xA0),
    0x061C,
    0x200E,
    0x200F,
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
)
_ESCAPES: Final = {
    cp: (f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}") for cp in _UNSAFE_CODEPOINTS
}
_ESCAPES_KEEPING_NEWLINES: Final = {cp: e for cp, e in _ESCAPES.items() if cp != 0x0A}
_ESCAPES_KEEPING_LAYOUT: Final = {cp: e for cp, e in _ESCAPES.items() if cp not in (0x09, 0x0A)}

# What is shown of one name (record, tensor, task, peer ID, address, dtype, dimension),
# and of one error message; longer text is cut and says how much was left out.
MAX_NAME_CHARS: Final = 200
MAX_ERROR_CHARS: Final = 4000


def terminal_safe(
    text: str, *, limit: int | None = MAX_NAME_CHARS, newline: str | None = None
) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``, ``\\u202e``)
    and, beyond ``limit`` characters (None: no limit), cut with a note of how many more
    there were. With ``newline``, line breaks are kept and replaced by it (``"\\n  "``
    indents the lines after the first, so that none can pass for a line of p2pnet's own
    output); without, they are shown as ``\\n`` too.

    The result is text for ``Text`` or ``markup=False``, not for markup."""
    cut = ""
    if limit is not None and len(text) > limit:
        cut = f"… ({len(text) - limit:,} more characters)"
        text = text[:limit]
    if newline is None:
        return text.translate(_ESCAPES) + cut
    return text.translate(_ESCAPES_KEEPING_NEWLINES).replace("\n", newline) + cut


def reply_safe(text: str) -> str:
    """A piece of a model's streamed reply, for the terminal: its control characters
    shown as escapes as ``terminal_safe`` shows them, but its line breaks and tabs kept
    (a reply is lines of text; ``\\r\\n`` becomes ``\\n``), and nothing cut. The result
    is written to the terminal as it is, never through rich, so ``[red]`` stays text."""
    return text.replace("\r\n", "\n").translate(_ESCAPES_KEEPING_LAYOUT)


def peer_text(value: object, style: str = "", *, limit: int | None = MAX_NAME_CHARS) -> Text:
    """``str(value)`` as a rich ``Text`` in ``style``: made ``terminal_safe`` (one line),
    never read as markup."""
    return Text(terminal_safe(str(value), limit=limit), style=style)


def shape_text(shape: Iterable[Dim]) -> str:
    """A shape as ``[n, 4]``: a number a fixed size, a name a symbolic one (made
    ``terminal_safe``), ``?`` a free one."""
    dims = ", ".join("?" if d is None else terminal_safe(str(d)) for d in shape)
    return f"[{dims}]"


class SpecLike(Protocol):
    """A tensor of a schema as ``spec_text`` shows it: a TensorSpec, or its JSON form
    read back (``p2pnet find`` through the running peer's API)."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> Sequence[Dim]: ...


def spec_text(spec: SpecLike) -> Text:
    """One tensor of a schema as ``name: dtype[n, 4]``."""
    return peer_text(spec.name) + ": " + peer_text(spec.dtype) + shape_text(spec.shape)


def joined_text(parts: Sequence[Text | str], separator: str = ", ", empty: str = "-") -> Text:
    """``parts`` joined by ``separator`` into one ``Text`` (``empty`` if there are none);
    ``str`` parts must already be safe."""
    if not parts:
        return Text(empty)
    return Text(separator).join(Text(p) if isinstance(p, str) else p for p in parts)


def tensor_json(arr: npt.NDArray[Any]) -> dict[str, Any]:
    """A tensor as JSON: dtype, shape and data."""
    from p2pnet.core.tensor import dtype_name

    return {"dtype": dtype_name(arr), "shape": list(arr.shape), "data": arr.tolist()}


def schema_table(info: ModelInfo) -> Table:
    """A model's inputs and outputs: name, dtype and shape (``?`` for a free dimension)."""
    from rich.table import Table

    title = peer_text(info.name) + f" ({info.size:,} bytes)"
    table = Table(title=title, title_justify="left")
    for column in ("", "name", "dtype", "shape"):
        table.add_column(column)
    for kind, specs in (("input", info.schema.inputs), ("output", info.schema.outputs)):
        for spec in specs:
            table.add_row(
                kind, peer_text(spec.name), peer_text(spec.dtype), Text(shape_text(spec.shape))
            )
    return table


def generation_text(card: GenerationCard) -> Text:
    """A generative model's card: context, end tokens, chat turn format, tokenizer."""
    text = Text("generates text: ", style="bold")
    text.append(f"context {card.context_length:,} tokens, end tokens {list(card.eos_token_ids)}, ")
    text.append("chat turn ")
    text.append(peer_text(repr(card.chat_turn)))
    text.append(f", tokenizer {card.tokenizer[:19]}…")
    return text


def outputs_table(title: str | Text, outputs: Mapping[str, npt.NDArray[Any]]) -> Table:
    """Output tensors: name, dtype, shape and values (long ones elided); the title (if a
    ``str``), names and values are shown as ``terminal_safe`` text, never as markup."""
    import numpy as np
    from rich.table import Table

    from p2pnet.core.tensor import dtype_name

    if isinstance(title, str):
        title = peer_text(title, limit=None)
    table = Table(title=title, title_justify="left")
    for column in ("output", "dtype", "shape", "value"):
        table.add_column(column)
    with np.printoptions(threshold=20, edgeitems=3, precision=4, suppress=True):
        for name, arr in outputs.items():
            table.add_row(
                peer_text(name),
                peer_text(dtype_name(arr)),
                Text(shape_text(arr.shape)),
                _value_text(arr),
            )
    return table


def _value_text(arr: npt.NDArray[Any]) -> Text:
    """An output's values as numpy prints them (long arrays elided, a row per line), made
    ``terminal_safe``. numpy shows the strings in an array by their ``repr``, so their own
    line breaks appear as ``\\n``; a 0-d tensor is shown by its value's ``repr`` likewise.
    A long string is the model's answer and is shown whole."""
    printed = str(arr) if arr.ndim else repr(arr.item())
    return Text(terminal_safe(printed, limit=None, newline="\n"))


class TerminalSafeLogs(logging.Filter):
    """A filter for the log handler that writes to the terminal: each record's message
    (which may quote other peers' error messages and names) made ``terminal_safe``, its
    lines after the first indented. The record is changed in place: the terminal is the
    command line's only log handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        safe = terminal_safe(message, limit=MAX_ERROR_CHARS, newline="\n  ")
        if safe != message:
            record.msg, record.args = safe, None
        return True


# P2PNetError.fault, as the first line of an error says it.
_WHOSE_FAULT: Final = {
    "caller": " (in the call or the configuration)",
    "peer": " (the other peer's fault)",
    "network": " (the network between the peers)",
}


def error_text(exc: P2PNetError) -> Text:
    """An error as the commands print it: ``error``, whose fault it was, and the message
    as text, not markup. Messages hold brackets ("float32[n]", "p2pnet[models]"), and
    text from other peers (their error messages, names), which is made terminal-safe;
    lines after the first are indented."""
    message = terminal_safe(str(exc), limit=MAX_ERROR_CHARS, newline="\n  ")
    fault = _WHOSE_FAULT.get(exc.fault, "")
    return Text("error", style="bold red") + fault + ": " + message


def exit_status(exc: P2PNetError) -> int:
    """The exit status of a command that ends with ``exc``: 2 for the caller's mistakes
    (UsageError), 1 for the rest (the peer, the network, time)."""
    return 2 if isinstance(exc, UsageError) else 1


def figure(value: float | None, fmt: str) -> str:
    """``value`` in ``fmt``, or ``-`` for none."""
    return "-" if value is None else format(value, fmt)
