"""The network's models as Model Context Protocol tools (docs/gateway.md, "MCP"): one
tool per task, over a running peer, on the peer's HTTP app (``/mcp``, Streamable HTTP)
or on stdio (``p2pnet mcp``).

- The tools: the tasks given (``expose``), else every task of the records the peer knows
  (``Peer.known_records``: its own, then those providers sent it lately; generative
  models left out), read again at every ``tools/list``. A task tag (lower case letters,
  digits and ``-``, at most 64) is already a valid tool name, so the tool is named after
  its task as it is; anything else is refused as a tool name.
- A tool's input schema is the signed schema of the task's first known record (the peer's
  own first): one property per input tensor, nested arrays with ``minItems``/``maxItems``
  for fixed sizes; its output schema, that of the outputs, when every known record of the
  task agrees on them.
- Calling a tool is ``Peer.call_with_offer`` of its task (discovery, failover, access
  lists, credit, spot checks). Bad inputs and every p2pnet error are tool errors
  (``isError``) with the p2pnet message; the result's ``_meta`` names the model and the
  peer that answered.

The SDK (``mcp``) is imported when MCP is first used, not with this module: the peer's
HTTP app is built without paying for it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlencode

import numpy as np
import numpy.typing as npt
import trio

from p2pnet.core.records import MAX_TASK_LENGTH, CapabilityRecord
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.errors import InvalidInputError, P2PNetError, UsageError
from p2pnet.inputs import tensor_from_json, tensor_to_json

if TYPE_CHECKING:
    import mcp_types
    from mcp.server import Server, ServerRequestContext
    from mcp.shared.message import SessionMessage
    from trio_typing import TaskStatus

    from p2pnet.peer import Peer

__all__ = [
    "LIST_FIND_TIMEOUT",
    "MAX_SESSIONS",
    "STDIO_GRACE",
    "STDIO_MAX_LINE",
    "McpGateway",
    "McpHttp",
    "TaskTool",
    "bridge_stdio",
    "check_expose",
    "endpoint_url",
    "input_schema",
    "output_schema",
    "serve_stdio",
    "task_tools",
    "tensors_from_arguments",
    "tool_name",
]

log = logging.getLogger(__name__)

# Seconds a tools/list searches the swarm for an exposed task no known record offers.
LIST_FIND_TIMEOUT: Final = 5.0
# Seconds MCP on stdio waits, once stdin has ended, for the answers still due.
STDIO_GRACE: Final = 60.0
# The longest line (one JSON-RPC message) read from stdin, in bytes: the HTTP API's body limit.
STDIO_MAX_LINE: Final = 16 * 1024 * 1024
# MCP sessions one peer's /mcp keeps open at once (the SDK's default is 10 000).
MAX_SESSIONS: Final = 100
# Keys of a tool result's ``_meta``.
META_MODEL: Final = "p2pnet/model_id"
META_PEER: Final = "p2pnet/peer_id"
META_CODE: Final = "p2pnet/code"

_ASGI = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
_INTEGER_DTYPES: Final = frozenset(
    {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
)
_NUMBER_DTYPES: Final = frozenset({"float16", "float32", "float64"})
# An input tensor given as {dtype, shape, data} (p2pnet.inputs.tensor_from_json): the
# inputs of a tool whose task has no known record yet.
_TENSOR_OBJECT: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "dtype": {
            "type": "string",
            "description": "float32 (default for numbers), int64, bool, string (default "
            "for text), ...",
        },
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": {"description": "the values, nested or flat (then reshaped to shape)"},
    },
    "required": ["data"],
    "additionalProperties": False,
}


# --- tools: pure ---------------------------------------------------------------------------


def tool_name(task: str) -> str:
    """The MCP tool name of ``task``: the task tag itself (a tag, ``[a-z0-9][a-z0-9-]*`` of
    at most 64 characters, is a valid tool name as it is, so two tasks never share one).

    Raises:
        UsageError: ``task`` is not a task tag.
    """
    if not _is_task(task):
        raise UsageError(
            f"{_printable(task)[:80]!r} is not a task tag: lower case letters, digits and "
            f"'-', starting with a letter or digit, at most {MAX_TASK_LENGTH} characters"
        )
    return task


def check_expose(tasks: Sequence[str]) -> tuple[str, ...]:
    """The tasks to expose as tools, checked: each a task tag, none twice.

    Raises:
        UsageError: a task that is not a task tag, or one given twice (its tool name
            would be taken twice).
    """
    seen: set[str] = set()
    for task in tasks:
        name = tool_name(task)
        if name in seen:
            raise UsageError(f"task {task!r} exposed twice: its tool name {name!r} is taken")
        seen.add(name)
    return tuple(tasks)


@dataclass(frozen=True, slots=True)
class TaskTool:
    """A tool: its task, the record whose schema it shows (None: no known record offers
    the task), the known records of the task, and whether they all declare the same
    outputs."""

    task: str
    record: CapabilityRecord | None
    providers: int
    outputs_agree: bool

    @property
    def name(self) -> str:
        return tool_name(self.task)


def task_tools(records: Sequence[CapabilityRecord], expose: Sequence[str] = ()) -> list[TaskTool]:
    """The tools of ``records`` (best first: a peer's own records, then the others): one
    per task of ``expose``, in its order, or, when it is empty, one per task of the
    records that are not generative models, by name."""
    by_task: dict[str, list[CapabilityRecord]] = {}
    for record in records:
        if not expose and record.generation is not None:
            continue  # a chat model: p2pnet chat or the OpenAI-style API
        for task in record.tasks:
            by_task.setdefault(task, []).append(record)
    tasks = list(expose) if expose else sorted(by_task)
    tools = []
    for task in tasks:
        found = by_task.get(task, [])
        outputs = {r.schema.outputs for r in found}
        tools.append(TaskTool(task, found[0] if found else None, len(found), len(outputs) <= 1))
    return tools


def tensor_schema(spec: TensorSpec, *, plain_string: bool = True) -> dict[str, Any]:
    """The JSON Schema of one tensor: nested arrays, one level per dimension, fixed sizes
    as ``minItems``/``maxItems``; leaves ``number`` (floats), ``integer`` (with the dtype's
    range), ``boolean`` or ``string``. A string tensor whose every dimension may be 1
    also takes a plain string (``plain_string``), the tensor holding just it."""
    schema: dict[str, Any] = _leaf_schema(spec.dtype)
    for dim in reversed(spec.shape):
        schema = {"type": "array", "items": schema}
        if isinstance(dim, int):
            schema["minItems"] = schema["maxItems"] = dim
    if plain_string and spec.dtype == "string" and spec.shape and _ones_allowed(spec):
        schema = {"anyOf": [{"type": "string"}, schema]}
    symbols = [d for d in spec.shape if isinstance(d, str)]
    note = f"{spec.dtype}[{', '.join('?' if d is None else str(d) for d in spec.shape)}]"
    if symbols:
        note += "; " + ", ".join(
            f"dimension {_printable(s)!r} is the same size wherever it occurs" for s in symbols
        )
    return {**schema, "description": note}


def input_schema(schema: ModelSchema | None) -> dict[str, Any]:
    """A tool's input schema: an object with one required property per input tensor
    (``tensor_schema``); with no schema known, any properties, each a tensor
    ``{dtype, shape, data}``."""
    if schema is None:
        return {"type": "object", "additionalProperties": _TENSOR_OBJECT}
    return {
        "type": "object",
        "properties": {spec.name: tensor_schema(spec) for spec in schema.inputs},
        "required": [spec.name for spec in schema.inputs],
        "additionalProperties": False,
    }


def output_schema(schema: ModelSchema) -> dict[str, Any]:
    """A tool's output schema: an object with one property per output tensor, its data as
    nested arrays (``tensor_schema``, no plain strings)."""
    return {
        "type": "object",
        "properties": {
            spec.name: tensor_schema(spec, plain_string=False) for spec in schema.outputs
        },
        "required": [spec.name for spec in schema.outputs],
    }


def tool_description(tool: TaskTool) -> str:
    """What the tool does and takes, for the model that calls it. Names come from other
    peers' records: quoted, their control characters escaped."""
    head = (
        f"Runs the model of task {tool.task!r} on a provider in the p2pnet swarm (another "
        "provider takes over if one fails)."
    )
    record = tool.record
    if record is None:
        return (
            f"{head} No provider of the task is known yet: give each input tensor as "
            '{"dtype", "shape", "data"}.'
        )
    others = [t for t in record.tasks if t != tool.task]
    return " ".join(
        [
            head,
            f"Model {_printable(record.name)!r} ({record.model_id}); {tool.providers} "
            "known provider(s)" + (f"; its other tasks: {', '.join(others)}." if others else "."),
            "Takes " + ", ".join(_spec_text(s) for s in record.schema.inputs) + ".",
            "Returns " + ", ".join(_spec_text(s) for s in record.schema.outputs) + ".",
        ]
    )


def tensors_from_arguments(
    schema: ModelSchema | None, arguments: Mapping[str, Any]
) -> dict[str, npt.NDArray[Any]]:
    """A tool call's arguments as the tensors of a call: each input's nested array (or,
    for a string tensor whose dimensions may all be 1, a plain string) in its dtype, by
    ``schema``; with no schema, each argument a tensor ``{dtype, shape, data}``.

    Raises:
        InvalidInputError: an input missing or not the model's, a value of another kind
            than its dtype's (a fraction for an integer, a number out of its range, a
            number for a string...), or not a regular nested array of its rank.
    """
    if schema is None:
        if not arguments:
            raise InvalidInputError(
                'no inputs: give each input tensor as {"dtype", "shape", "data"}'
            )
        return {name: tensor_from_json(name, value) for name, value in arguments.items()}
    takes = "; the model takes " + ", ".join(_spec_text(s) for s in schema.inputs)
    names = {spec.name for spec in schema.inputs}
    for name in arguments:
        if name not in names:
            raise InvalidInputError(f"unexpected input {_printable(name)[:80]!r}{takes}")
    for spec in schema.inputs:
        if spec.name not in arguments:
            raise InvalidInputError(f"missing input {spec.name!r}{takes}")
    return {spec.name: _tensor(spec, arguments[spec.name]) for spec in schema.inputs}


def outputs_content(outputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, Any]:
    """A call's outputs as a tool's structured content: each output's data, nested."""
    return {name: tensor_to_json(arr)["data"] for name, arr in outputs.items()}


def _tensor(spec: TensorSpec, value: Any) -> npt.NDArray[Any]:
    where = f"input {spec.name!r} ({_spec_text(spec)})"
    rank = len(spec.shape)
    if isinstance(value, str) and spec.dtype == "string" and rank and _ones_allowed(spec):
        return tensor_from_json(spec.name, {"dtype": "string", "shape": [1] * rank, "data": value})
    level, shape = [value], []
    for axis, dim in enumerate(spec.shape):
        sizes = {len(v) if isinstance(v, list) else -1 for v in level}
        if -1 in sizes:
            raise InvalidInputError(f"{where} takes nested arrays {rank} deep; level {axis} is not")
        if len(sizes) > 1:
            raise InvalidInputError(f"{where}: the arrays at level {axis} differ in length")
        # Under an empty array: the schema's size, else 0.
        shape.append(sizes.pop() if sizes else dim if isinstance(dim, int) else 0)
        level = [item for v in level for item in v]
    for leaf in level:
        wrong = _leaf_mismatch(spec.dtype, leaf)
        if wrong is not None:
            raise InvalidInputError(f"{where} takes {wrong}; got {_preview(leaf)}")
    return tensor_from_json(spec.name, {"dtype": spec.dtype, "shape": shape, "data": value})


def _preview(value: Any) -> str:
    """A short view of a JSON value for a message (an array or object not spelled out)."""
    if isinstance(value, list | dict):
        return "an array" if isinstance(value, list) else "an object"
    return json.dumps(value[:40] if isinstance(value, str) else value)


def _leaf_mismatch(dtype: str, leaf: Any) -> str | None:
    """What a value of ``dtype`` must be, if ``leaf`` is not that; else None."""
    if dtype == "string":
        return None if isinstance(leaf, str) else "text"
    if dtype == "bool":
        return None if isinstance(leaf, bool) else "true or false"
    if dtype in _INTEGER_DTYPES:
        info = np.iinfo(dtype)
        if isinstance(leaf, int) and not isinstance(leaf, bool) and info.min <= leaf <= info.max:
            return None
        return f"whole numbers from {info.min} to {info.max}"
    if isinstance(leaf, int | float) and not isinstance(leaf, bool):
        return None
    return "numbers"


def _leaf_schema(dtype: str) -> dict[str, Any]:
    if dtype == "string":
        return {"type": "string"}
    if dtype == "bool":
        return {"type": "boolean"}
    if dtype in _INTEGER_DTYPES:
        info = np.iinfo(dtype)
        return {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}
    if dtype in _NUMBER_DTYPES:
        return {"type": "number"}
    return {}  # a dtype this peer does not know: any value, the provider checks it


def _ones_allowed(spec: TensorSpec) -> bool:
    """Whether every dimension of ``spec`` may be 1 (1, symbolic or any size)."""
    return all(not isinstance(d, int) or d == 1 for d in spec.shape)


def _spec_text(spec: TensorSpec) -> str:
    return _printable(spec.describe())


def _printable(text: str) -> str:
    """``text`` with its non-printable characters escaped (another peer's text)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _is_task(text: object) -> bool:
    return (
        isinstance(text, str)
        and 0 < len(text) <= MAX_TASK_LENGTH
        and text[0] in _TAG_START
        and all(c in _TAG_CHARS for c in text)
    )


_TAG_START: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_TAG_CHARS: Final = _TAG_START | {"-"}


# --- the server over a peer ----------------------------------------------------------------


class McpGateway:
    """The MCP tools of ``peer``: the tasks of ``expose``, or (empty) every task of the
    records the peer knows; each call given ``timeout`` seconds. ``server()`` is the SDK's
    low-level server of them, for any transport."""

    def __init__(
        self,
        peer: Peer,
        *,
        expose: Sequence[str] = (),
        timeout: float = 30.0,
        find_timeout: float = LIST_FIND_TIMEOUT,
    ) -> None:
        self.peer = peer
        self.expose = check_expose(expose)
        self.timeout = timeout
        self.find_timeout = find_timeout

    async def tools(self, expose: Sequence[str] | None = None) -> list[TaskTool]:
        """The tools now, of ``expose`` (None: the gateway's): from the records the peer
        knows; an exposed task none of them offers is searched for in the swarm first
        (for ``find_timeout`` seconds), and if still none is found, its tool takes
        tensors of any schema."""
        expose = self.expose if expose is None else expose
        records = self.peer.known_records()
        offered = {t for r in records for t in r.tasks}
        missing = [task for task in expose if task not in offered]
        if missing:
            found: list[CapabilityRecord] = []

            async def find(task: str) -> None:
                try:
                    offers = await self.peer.find(task=task, timeout=self.find_timeout)
                except P2PNetError as exc:
                    log.info("MCP tools: no offer of task %r: %s", task, exc)
                    return
                found.extend(offer.record for offer in offers)

            async with trio.open_nursery() as nursery:
                for task in missing:
                    nursery.start_soon(find, task)
            records = records + found
        return task_tools(records, expose)

    async def tool(self, name: str, expose: Sequence[str] | None = None) -> TaskTool:
        """The tool called ``name`` among those of ``expose`` (None: the gateway's), from
        the records the peer knows now, or (none of them offers its task) those a search
        finds (``tools``).

        Raises:
            UsageError: no such tool: not a task tag, or a task not exposed.
        """
        expose = self.expose if expose is None else expose
        task = tool_name(name)
        if expose and task not in expose:
            raise UsageError(f"no tool {name!r} here; the tools are {', '.join(expose)}")
        return (await self.tools((task,)))[0]

    def exposed(self, ctx: ServerRequestContext[Any, Any]) -> tuple[str, ...]:
        """The tasks a request exposes: over HTTP, those of the endpoint URL's ``expose``
        query parameters (``/mcp?expose=TASK&expose=TASK``) if it has any; else the
        gateway's.

        Raises:
            UsageError: an ``expose`` value that is not a task tag, or one given twice.
        """
        query = getattr(ctx.request, "query_params", None)
        asked = query.getlist("expose") if query is not None else []
        return check_expose(asked) if asked else self.expose

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListToolsResult:
        import mcp_types as types
        from mcp.shared.exceptions import MCPError

        try:
            expose = self.exposed(ctx)
        except UsageError as exc:
            raise MCPError(types.INVALID_PARAMS, f"expose: {exc}") from None
        listed = []
        for tool in await self.tools(expose):
            record = tool.record
            listed.append(
                types.Tool(
                    name=tool.name,
                    title=f"p2pnet task {tool.task}",
                    description=tool_description(tool),
                    input_schema=input_schema(record.schema if record else None),
                    output_schema=(
                        output_schema(record.schema) if record and tool.outputs_agree else None
                    ),
                )
            )
        return types.ListToolsResult(tools=listed)

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: mcp_types.CallToolRequestParams
    ) -> mcp_types.CallToolResult:
        import mcp_types as types

        try:
            tool = await self.tool(params.name, self.exposed(ctx))
            schema = tool.record.schema if tool.record else None
            inputs = tensors_from_arguments(schema, params.arguments or {})
            offer, outputs = await self.peer.call_with_offer(
                inputs, task=tool.task, timeout=self.timeout
            )
        except P2PNetError as exc:
            log.info("MCP tool %r: %s", _printable(params.name)[:80], exc)
            return types.CallToolResult(
                content=[types.TextContent(text=str(exc))],
                is_error=True,
                _meta={META_CODE: exc.code},
            )
        content = outputs_content(outputs)
        meta = {META_MODEL: offer.record.model_id, META_PEER: offer.record.peer_id}
        text = types.TextContent(text=json.dumps(content))
        listed = tool.record.schema.outputs if tool.record and tool.outputs_agree else None
        if listed is not None and offer.record.schema.outputs != listed:
            # The model that answered declares other outputs than the tool lists: its
            # structured content would not fit the tool's output schema.
            note = (
                f"model {offer.record.model_id} answered with other outputs than the tool's "
                "output schema (list the tools again); its outputs:"
            )
            return types.CallToolResult(
                content=[types.TextContent(text=note), text],
                is_error=True,
                _meta={**meta, META_CODE: "bad_output"},
            )
        return types.CallToolResult(content=[text], structured_content=content, _meta=meta)

    def server(self) -> Server[Any]:
        """The SDK's low-level MCP server of these tools."""
        from mcp.server import Server

        from p2pnet import __version__

        return Server(
            "p2pnet",
            version=__version__,
            instructions="Each tool runs an AI model of the p2pnet swarm, found by its task.",
            # No input is mirrored in Mcp-Param-* headers: nothing for the SDK to check
            # against a tools/list it would otherwise run before every 2026-07-28 call.
            get_tool_input_schema=lambda name: None,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
        )


async def serve_stdio(
    peer: Peer, *, expose: Sequence[str] = (), timeout: float = 30.0, grace: float = STDIO_GRACE
) -> None:
    """Serve ``peer``'s MCP tools on stdin and stdout until stdin ends and every request
    read is answered (for ``grace`` seconds at most). While serving, a stray write to
    stdout goes to stderr (the SDK's ``stdio_server``).

    Raises:
        UsageError: an exposed task that is not a task tag, or one given twice.
    """
    import anyio
    from mcp.server.stdio import stdio_server
    from mcp.shared.message import SessionMessage

    server = McpGateway(peer, expose=expose, timeout=timeout).server()
    to_server, server_in = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    server_out, from_server = anyio.create_memory_object_stream[SessionMessage](0)
    stdin = cast(Any, _StdinLines(STDIO_MAX_LINE))
    async with stdio_server(stdin) as (local_read, local_write), trio.open_nursery() as nursery:
        options = server.create_initialization_options()
        nursery.start_soon(server.run, server_in, server_out, options)
        await _relay(local_read, local_write, from_server, to_server, grace=grace)
        nursery.cancel_scope.cancel()


def endpoint_url(api: str, expose: Sequence[str] = ()) -> str:
    """The URL of the MCP endpoint of the peer's HTTP API at ``api`` (its base URL), with
    the tasks it should expose (none: every task the peer knows)."""
    query = urlencode([("expose", task) for task in expose])
    return api.rstrip("/") + "/mcp" + (f"?{query}" if query else "")


async def bridge_stdio(endpoint: str, token: str, *, grace: float = STDIO_GRACE) -> None:
    """Forward MCP between stdin/stdout and the MCP ``endpoint`` of a peer's HTTP API
    (``endpoint_url``) with ``token``, message by message, until stdin ends and every
    request sent on is answered (for ``grace`` seconds at most).

    Each request sent on carries the HTTP headers the Streamable HTTP transport needs:
    ``MCP-Protocol-Version`` (the version in the request's ``_meta``, else the one the
    initialize handshake agreed), ``Mcp-Method`` and ``Mcp-Name``. Nothing is sent on
    after an ``initialize`` request until it is answered (its answer carries the
    session ID).
    """
    import httpx2
    from mcp.client.streamable_http import streamable_http_client
    from mcp.server.stdio import stdio_server

    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx2.Timeout(30.0, read=300.0)  # the SDK's: a reply may stream long
    async with (
        stdio_server(cast(Any, _StdinLines(STDIO_MAX_LINE))) as (local_read, local_write),
        httpx2.AsyncClient(headers=headers, timeout=timeout) as client,
        streamable_http_client(endpoint, http_client=client) as (remote_read, remote_write),
    ):
        log.info("MCP on stdio, bridged to %s", endpoint)
        await _relay(local_read, local_write, remote_read, remote_write, grace=grace, stamp=True)


async def _relay(
    local_read: Any,
    local_write: Any,
    remote_read: Any,
    remote_write: Any,
    *,
    grace: float,
    stamp: bool = False,
) -> None:
    """Forward messages from ``local_read`` to ``remote_write`` and from ``remote_read``
    to ``local_write`` until ``local_read`` ends and every request sent on is answered
    (for ``grace`` seconds at most); then close both write streams. Nothing is sent on
    after an ``initialize`` request until it is answered. ``stamp``: give each message
    the HTTP headers of the Streamable HTTP transport (``_stamped``)."""
    import mcp_types as types
    from mcp.shared.message import SessionMessage

    agreed: list[str] = []  # the protocol version of the initialize handshake
    initialize_ids: set[Any] = set()
    pending = _Pending()
    async with local_write, remote_write, trio.open_nursery() as nursery:

        async def upstream() -> None:
            async for message in local_read:
                if isinstance(message, Exception):
                    log.warning("stdin: not a JSON-RPC message: %s", message)
                    continue
                inner = message.message
                if isinstance(inner, types.JSONRPCRequest):
                    pending.sent(inner.id)
                if stamp:
                    message = _stamped(message, agreed[-1] if agreed else None)
                await remote_write.send(message)
                if isinstance(inner, types.JSONRPCRequest) and inner.method == "initialize":
                    initialize_ids.add(inner.id)
                    await pending.empty.wait()  # its answer may carry the session ID
            with trio.move_on_after(grace):
                await pending.empty.wait()
            if pending.ids:
                log.warning("stdin ended; %d request(s) left unanswered", len(pending.ids))
            nursery.cancel_scope.cancel()

        async def downstream() -> None:
            async for message in remote_read:
                if isinstance(message, Exception):
                    log.warning("MCP: %s", message)
                    continue
                inner = message.message
                if isinstance(inner, types.JSONRPCResponse) and inner.id in initialize_ids:
                    version = inner.result.get("protocolVersion")
                    if isinstance(version, str):
                        agreed.append(version)
                await local_write.send(SessionMessage(inner))
                if isinstance(inner, types.JSONRPCResponse | types.JSONRPCError):
                    pending.answered(inner.id)

        nursery.start_soon(upstream)
        nursery.start_soon(downstream)


class _StdinLines:
    """The lines of stdin as ``stdio_server`` reads them (``async for``), each at most
    ``limit`` bytes before its line break: a longer one is skipped, said in the log, and
    read as an empty line (which is not a JSON-RPC message)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit

    def __aiter__(self) -> _StdinLines:
        return self

    async def __anext__(self) -> str:
        read = sys.stdin.buffer.readline
        line: bytes = await trio.to_thread.run_sync(read, self._limit + 1)
        if not line:
            raise StopAsyncIteration
        if len(line) > self._limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = await trio.to_thread.run_sync(read, self._limit)
            log.warning("stdin: a line over %d bytes, skipped", self._limit)
            return "\n"
        return line.decode("utf-8", errors="replace")


class _Pending:
    """The requests sent on and not answered yet; ``empty`` is set while there are none."""

    def __init__(self) -> None:
        self.ids: set[Any] = set()
        self.empty = trio.Event()
        self.empty.set()

    def sent(self, request_id: Any) -> None:
        self.ids.add(request_id)
        if self.empty.is_set():
            self.empty = trio.Event()

    def answered(self, request_id: Any) -> None:
        self.ids.discard(request_id)
        if not self.ids:
            self.empty.set()


def _stamped(message: SessionMessage, agreed: str | None) -> SessionMessage:
    """``message`` with the per-request headers of the Streamable HTTP transport."""
    import mcp_types as types
    from mcp.shared.inbound import (
        MCP_METHOD_HEADER,
        MCP_NAME_HEADER,
        MCP_PROTOCOL_VERSION_HEADER,
        NAME_BEARING_METHODS,
        encode_header_value,
    )
    from mcp.shared.message import ClientMessageMetadata, SessionMessage

    inner = message.message
    if not isinstance(inner, types.JSONRPCRequest | types.JSONRPCNotification):
        # Answers to the server's requests: the agreed version only.
        headers = {MCP_PROTOCOL_VERSION_HEADER: agreed} if agreed else None
        return SessionMessage(inner, ClientMessageMetadata(headers=headers))
    params = inner.params if isinstance(inner.params, dict) else {}
    meta = params.get("_meta")
    version = meta.get(types.PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    if not isinstance(version, str):
        if inner.method == "initialize" or agreed is None:
            return SessionMessage(inner)
        return SessionMessage(
            inner, ClientMessageMetadata(headers={MCP_PROTOCOL_VERSION_HEADER: agreed})
        )
    headers = {MCP_PROTOCOL_VERSION_HEADER: version, MCP_METHOD_HEADER: inner.method}
    name_key = NAME_BEARING_METHODS.get(inner.method)
    if name_key is not None and isinstance(name := params.get(name_key), str):
        headers[MCP_NAME_HEADER] = encode_header_value(name)
    return SessionMessage(inner, ClientMessageMetadata(headers=headers))


# --- /mcp on the peer's HTTP app -----------------------------------------------------------


class McpHttp:
    """The ASGI app of ``/mcp`` on a peer's HTTP app: the SDK's Streamable HTTP session
    manager over ``McpGateway(peer)``, made at the first request (the SDK is loaded then)
    and run in the nursery of the app's lifespan (``lifespan``; hypercorn runs it).

    The token and the Host header are checked before (``TokenGuard``): the SDK's own
    DNS-rebinding check is off, and requests are bounded by ``max_body`` bytes; at most
    ``MAX_SESSIONS`` sessions at once, each closed after 30 minutes without a request.
    """

    def __init__(self, peer: Peer, *, max_body: int) -> None:
        self._peer = peer
        self._max_body = max_body
        self._nursery: trio.Nursery | None = None
        self._handler: _ASGI | None = None
        self._lock = trio.Lock()

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """The app's lifespan: a nursery for the session manager while the app serves."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield
            finally:
                self._nursery = self._handler = None
                nursery.cancel_scope.cancel()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        handler = self._handler or await self._start()
        await handler(scope, receive, send)

    async def _start(self) -> _ASGI:
        async with self._lock:
            if self._handler is not None:
                return self._handler
            if self._nursery is None:
                raise RuntimeError("/mcp runs in the app's lifespan: serve the app with serve_http")
            from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
            from mcp.server.transport_security import TransportSecuritySettings

            manager = StreamableHTTPSessionManager(
                app=McpGateway(self._peer).server(),
                # TokenGuard answers loopback Host names only while on loopback; beyond it,
                # the token alone decides, as for every other route.
                security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
                max_request_body_size=self._max_body,
                max_sessions=MAX_SESSIONS,
            )
            await self._nursery.start(_run_manager, manager)
            self._handler = manager.handle_request
            return manager.handle_request


async def _run_manager(
    manager: Any, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    async with manager.run():
        task_status.started()
        await trio.sleep_forever()
