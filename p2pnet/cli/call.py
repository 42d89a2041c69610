"""``p2pnet call``: call a model on a given peer, or found by task or ID, and print its
outputs; or, given a prompt, stream a generative model's reply."""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.text import Text

from p2pnet.cli.options import (
    Command,
    DiscoveryOptions,
    ParentParsers,
    Subparsers,
    add_input_option,
    finish_checks,
    generation_params,
    load_identity,
    running_peer_api,
    running_peer_client,
)
from p2pnet.cli.render import exit_status, peer_text
from p2pnet.core.generation import ROLES, GenerationParams
from p2pnet.errors import P2PNetError, UsageError

# numpy, trio and the streaming of replies are imported where they are used, and a peer
# of the command's own only when there is no running peer to go through
# (tests/test_cli_imports.py).
if TYPE_CHECKING:
    import numpy.typing as npt

    from p2pnet.cli.stream import Interrupts, JsonReplies, TextReplies
    from p2pnet.gateway.client import ApiClient
    from p2pnet.peer import Peer

__all__ = ["CallOptions", "add_call_parser", "call_model"]


@dataclass(frozen=True, slots=True)
class CallOptions:
    """The options of ``p2pnet call``: ``target`` is ADDRESS MODEL_ID (or nothing, to find
    the model by --task or --model), ``inputs`` the NAME=VALUE texts of a tensor call;
    ``messages`` the (role, text) turns of a generation (``--message``, ``--prompt``),
    in the order given, and ``params`` its settings."""

    discovery: DiscoveryOptions
    target: tuple[str, ...]
    inputs: tuple[str, ...]
    messages: tuple[tuple[str, str], ...] = ()
    params: GenerationParams = field(default_factory=GenerationParams)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CallOptions:
        """The parsed arguments as typed options.

        Raises:
            UsageError: both inputs and messages; a generation option out of range;
                ``--max-price`` with messages (generation does not choose by price).
        """
        discovery = DiscoveryOptions.from_args(args)
        messages = tuple(args.messages)
        if messages and args.input:
            raise UsageError(
                "give --input for a call with tensors, or --prompt/--message for a "
                "generation, not both"
            )
        if messages and discovery.max_price is not None:
            raise UsageError("--max-price: a generation does not choose providers by price")
        return cls(
            discovery, tuple(args.target), tuple(args.input), messages, generation_params(args)
        )

    @property
    def generates(self) -> bool:
        """A generation (streamed text), not a call with tensors."""
        return bool(self.messages)


def _message(text: str) -> tuple[str, str]:
    """``ROLE:TEXT`` as (role, text)."""
    role, sep, content = text.partition(":")
    if not sep or role not in ROLES:
        raise argparse.ArgumentTypeError(
            f"expected ROLE:TEXT with ROLE one of {', '.join(ROLES)}, got {text!r:.60}"
        )
    return role, content


def _user_message(text: str) -> tuple[str, str]:
    return "user", text


def add_call_parser(sub: Subparsers, parents: ParentParsers) -> None:
    p = sub.add_parser(
        "call",
        parents=[parents.common, parents.discovery, parents.generation],
        help="call a model on a given peer, or found by task or ID, and print its outputs "
        "(a generative model's reply streamed, with --prompt)",
    )
    p.add_argument(
        "target",
        nargs="*",
        metavar="ADDRESS MODEL_ID",
        help="the peer (/ip4/.../tcp/PORT/p2p/12D3...) and the model ID (bafkrei...)",
    )
    add_input_option(
        p, "an input: NAME=@file.npy, NAME=JSON, NAME:DTYPE=JSON or NAME=text (repeatable)"
    )
    p.add_argument(
        "--prompt",
        dest="messages",
        action="append",
        default=[],
        type=_user_message,
        metavar="TEXT",
        help="generate: stream a generative model's reply to this user message "
        "(the same as --message user:TEXT)",
    )
    p.add_argument(
        "--message",
        dest="messages",
        action="append",
        type=_message,
        metavar="ROLE:TEXT",
        help=f"generate: a turn of the conversation to reply to, ROLE one of "
        f"{', '.join(ROLES)} (repeatable, in order)",
    )
    p.set_defaults(handler=Command(CallOptions.from_args, call_model))


def call_model(options: CallOptions) -> int:
    """Call the model and print its outputs (a table, or JSON); or stream its reply."""
    from p2pnet.cli.render import out, outputs_table, tensor_json

    if options.generates:
        from p2pnet.cli.stream import run_interruptible

        return run_interruptible(
            functools.partial(_generate, options), verbose=options.discovery.verbose
        )
    from p2pnet.inputs import tensor_from_json

    started = time.perf_counter()
    tensors = _inputs_as_json(options.inputs)
    arrays = None if tensors is not None else _parsed(options.inputs)
    through_api = _call_through_running_peer(options, tensors, arrays)
    if through_api is not None:
        served_by, replied = through_api
        elapsed_ms = (time.perf_counter() - started) * 1000
        if options.discovery.json:
            print(json.dumps({name: _output_json(name, v) for name, v in replied.items()}))
            return 0
        outputs = {name: tensor_from_json(name, value) for name, value in replied.items()}
    else:
        import trio

        served_by, outputs = trio.run(
            _call, options, arrays if arrays is not None else _parsed(options.inputs)
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        if options.discovery.json:
            print(json.dumps({name: tensor_json(arr) for name, arr in outputs.items()}))
            return 0
    out.print(outputs_table(served_by + f" ({elapsed_ms:.0f} ms)", outputs))
    return 0


def _parsed(specs: tuple[str, ...]) -> dict[str, npt.NDArray[Any]]:
    """The inputs ``NAME=VALUE`` as arrays (``parse_input``).

    Raises:
        InvalidInputError: one cannot be read as a tensor.
    """
    from p2pnet.inputs import parse_input

    return dict(parse_input(spec) for spec in specs)


def _inputs_as_json(specs: tuple[str, ...]) -> dict[str, dict[str, Any]] | None:
    """The inputs as the API's JSON tensors, made without numpy (``input_as_json``:
    exactly what ``tensor_to_json`` makes of ``parse_input``'s arrays); None unless
    every one can be made so."""
    from p2pnet.inputs import input_as_json

    tensors = {}
    for spec in specs:
        made = input_as_json(spec)
        if made is None:
            return None
        tensors[made[0]] = made[1]
    return tensors


def _output_json(name: str, value: Any) -> dict[str, Any]:
    """An output of the API as ``--json`` prints it: ``tensor_json`` of its array, taken
    without numpy where that is the same (``exact_tensor_json``).

    Raises:
        InvalidInputError: not a tensor.
    """
    from p2pnet.inputs import exact_tensor_json

    exact = exact_tensor_json(value)
    if exact is not None:
        return exact
    from p2pnet.cli.render import tensor_json
    from p2pnet.inputs import tensor_from_json

    return tensor_json(tensor_from_json(name, value))


@dataclass(frozen=True, slots=True)
class _Target:
    """Who a call goes to: the peer at ``address`` for the model ``model`` (ADDRESS
    MODEL_ID), or the swarm's providers of ``task`` or ``model``; ``peer`` is this
    side's peer for it, not started yet."""

    peer: Peer
    address: str | None
    task: str | None
    model: str | None


def _target(options: CallOptions) -> _Target:
    """The target of the call, and a peer to reach it: one that joins nothing for
    ADDRESS MODEL_ID, else one that joins the swarm (``joining_peer``).

    Raises:
        UsageError: a target that is not ADDRESS MODEL_ID nor --task/--model with a
            swarm to ask.
        InvalidModelIdError: a MODEL_ID or ``--model`` that is not a model ID.
        ConfigError: the swarm or the identity cannot be used.
    """
    discovery = options.discovery
    join = discovery.swarm.resolve()
    identity, _, _ = load_identity(discovery.identity)
    direct = _direct(options)
    if direct is not None:
        address, model_id = direct
        return _Target(discovery.calling_peer(identity, join), address, None, model_id)
    task, model = discovery.target(join)
    return _Target(discovery.joining_peer(identity, join), None, task, model)


def _direct(options: CallOptions) -> tuple[str, str] | None:
    """(ADDRESS, MODEL_ID) of a call to a given peer, None for one by --task/--model.

    Raises:
        UsageError: a target that is not ADDRESS MODEL_ID, or one with --task/--model.
        InvalidModelIdError: a MODEL_ID that is not a model ID.
    """
    discovery = options.discovery
    if not options.target:
        return None
    if len(options.target) != 2 or discovery.task is not None or discovery.model is not None:
        raise UsageError("give ADDRESS MODEL_ID, or --task/--model with --bootstrap")
    from p2pnet.core.model_id import parse_model_id

    return options.target[0], parse_model_id(options.target[1])


def _served_by(model: str, address: str) -> Text:
    """Who served a call to a given peer."""
    return peer_text(f"{model} on {address.rsplit('/', 1)[-1]}")


def _served_by_offer(name: str, model_id: str, peer_id: str) -> Text:
    """Who served a call by task or model (all of it from another peer)."""
    return peer_text(name) + " " + peer_text(model_id) + " on " + peer_text(peer_id)


def _call_through_running_peer(
    options: CallOptions,
    tensors: dict[str, dict[str, Any]] | None,
    arrays: dict[str, npt.NDArray[Any]] | None,
) -> tuple[Text, dict[str, Any]] | None:
    """(who served the call, as terminal-safe text; the outputs as the API's JSON
    tensors) through the running peer of the identity (``running_peer_client``: no
    trio, no peer of this command's own); None when there is none to use. The inputs:
    ``tensors`` if made, else ``arrays``."""
    discovery = options.discovery
    direct = _direct(options)  # the caller's mistakes before anything else
    task, model = discovery.wanted() if direct is None else (None, direct[1])
    api = running_peer_client(discovery)
    if api is None:
        return None
    if tensors is None:
        from p2pnet.inputs import tensor_to_json

        assert arrays is not None
        tensors = {name: tensor_to_json(arr) for name, arr in arrays.items()}
    with api:
        reply = api.call_tensors(
            tensors,
            task=task,
            model=model,
            peer=None if direct is None else direct[0],
            timeout=discovery.timeout,
            max_price=discovery.max_price,
        )
    if direct is not None:
        return _served_by(direct[1], direct[0]), reply.outputs
    assert reply.peer_id is not None and reply.name is not None
    return _served_by_offer(reply.name, reply.model_id, reply.peer_id), reply.outputs


async def _call(
    options: CallOptions, inputs: dict[str, npt.NDArray[Any]]
) -> tuple[Text, dict[str, npt.NDArray[Any]]]:
    """(who served the call, as terminal-safe text; the outputs), by a peer of this
    command's own."""
    discovery = options.discovery
    target = _target(options)
    async with target.peer as peer:
        if target.address is not None and target.model is not None:
            outputs = await peer.invoke(
                target.address, target.model, inputs, timeout=discovery.timeout
            )
            return _served_by(target.model, target.address), outputs
        offer, outputs = await peer.call_with_offer(
            inputs,
            task=target.task,
            model=target.model,
            timeout=discovery.timeout,
            max_price=discovery.max_price,
        )
        await finish_checks(peer)
    record = offer.record
    return _served_by_offer(record.name, record.model_id, record.peer_id), outputs


async def _generate(options: CallOptions, interrupts: Interrupts) -> int:
    """Stream the reply to ``options.messages``: 0 when it ended, INTERRUPTED when
    Ctrl-C stopped it, the error's status when it failed."""
    from p2pnet.cli.stream import INTERRUPTED, JsonReplies, TextReplies, stream_reply
    from p2pnet.core.generation import Prompt

    discovery = options.discovery
    output: TextReplies | JsonReplies = JsonReplies() if discovery.json else TextReplies()
    try:
        direct = _direct(options)  # the caller's mistakes before anything else
        if direct is None:
            discovery.wanted()
        api = await running_peer_api(discovery)
        if api is not None:
            return await _generate_through(api, options, output, interrupts)
        target = _target(options)
        async with target.peer as peer:
            generation = peer.generate(
                Prompt(messages=options.messages),
                task=target.task,
                model=target.model,
                peer=target.address,
                params=options.params,
                timeout=discovery.timeout,
            )
            async with generation:
                summary = await stream_reply(generation, output, interrupts)
    except P2PNetError as exc:
        output.error(exc)
        return exit_status(exc)
    return INTERRUPTED if summary is None or summary.finish == "cancelled" else 0


async def _generate_through(
    api: ApiClient,
    options: CallOptions,
    output: TextReplies | JsonReplies,
    interrupts: Interrupts,
) -> int:
    """``_generate`` by the running peer's API: the same events, the same statuses.

    Raises:
        P2PNetError: the reply failed.
    """
    from p2pnet.cli.stream import INTERRUPTED, stream_remote_reply

    discovery = options.discovery
    direct = _direct(options)
    task, model = discovery.wanted() if direct is None else (None, direct[1])
    async with (
        api,
        api.generate(
            options.messages,
            task=task,
            model=model,
            peer=None if direct is None else direct[0],
            params=options.params,
            timeout=discovery.timeout,
        ) as reply,
    ):
        done = await stream_remote_reply(reply, output, interrupts)
    return INTERRUPTED if done is None or done["finish"] == "cancelled" else 0
