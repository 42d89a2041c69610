"""Text from other peers reaches the terminal escaped: never read as rich markup, control
characters (escape sequences, bidirectional overrides) shown as ``\\x1b``/``\\u202e``,
long names cut; symbolic dimensions show as they are. The render functions of every
command, records and outputs that crossed the (in-memory) network, and the real
``p2pnet find`` and ``call``."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
from memory_peers import memory_peer
from rich.console import Console, RenderableType

from p2pnet import Peer
from p2pnet.cli import main
from p2pnet.cli.find import offers_text, unanswered_text
from p2pnet.cli.render import (
    MAX_NAME_CHARS,
    outputs_table,
    peer_text,
    schema_table,
    shape_text,
    spec_text,
    terminal_safe,
)
from p2pnet.cli.status import status_text
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.discovery.service import Offer
from p2pnet.net.identity import generate_identity, peer_id_of
from p2pnet.net.memory import MemoryNetwork
from p2pnet.runtime.onnx_model import OnnxModel, inspect_model
from p2pnet.status import PeerStatus, ServedModelStatus, StatusFile

LONG = "n" * 10_000
# What a hostile peer puts in a name, and what the terminal must show for it.
HOSTILE = {
    "label[/]": "label[/]",
    "[/]": "[/]",
    "[bold red]x": "[bold red]x",
    "a\\": "a\\",
    "a\\[/]": "a\\[/]",
    "\x1b[31mred": "\\x1b[31mred",
    "\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\": "\\x1b]8;;http://evil\\x1b\\link",
    "\u202eevil.exe": "\\u202eevil.exe",
    "\u2066x\u2069": "\\u2066x\\u2069",
    "bell\x07\x08\r\n\t": "bell\\x07\\x08\\x0d\\x0a\\x09",
    "c1\x9b31m\x7f": "c1\\x9b31m\\x7f",
    LONG: "n" * MAX_NAME_CHARS + "… (9,800 more characters)",
}
# Characters a terminal acts on rather than shows (newlines aside, where allowed).
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
PEER = peer_id_of(generate_identity())
MODEL_ID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def printed(renderable: RenderableType) -> str:
    """What a terminal that takes no styles would get: every byte the console writes."""
    buffer = io.StringIO()
    Console(file=buffer, width=20_000, color_system=None, soft_wrap=True).print(renderable)
    return buffer.getvalue()


def styled(renderable: RenderableType) -> str:
    """What a colour terminal gets, with the console's own styles taken out."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=20_000, force_terminal=True, color_system="truecolor")
    console.print(renderable, soft_wrap=True)
    return re.sub(r"\x1b\[[0-9;]*m", "", buffer.getvalue())


def assert_safe(output: str) -> None:
    assert not UNSAFE.search(output), repr(UNSAFE.search(output))


@pytest.mark.parametrize("hostile", HOSTILE)
def test_terminal_safe_shows_control_characters_and_never_reads_markup(hostile: str) -> None:
    shown = HOSTILE[hostile]
    assert terminal_safe(hostile).startswith(shown)
    for output in (printed(peer_text(hostile)), styled(peer_text(hostile, "bold"))):
        assert_safe(output)
        assert output.startswith(shown)


def test_only_the_newlines_allowed_are_kept_and_they_are_indented() -> None:
    assert terminal_safe("a\nb\x1b", newline="\n  ") == "a\n  b\\x1b"
    assert terminal_safe("a\nb", limit=None) == "a\\x0ab"
    assert terminal_safe("x" * 5, limit=3) == "xxx… (2 more characters)"


def test_shapes_show_symbolic_dimensions() -> None:
    assert shape_text(["n", 4]) == "[n, 4]"
    assert shape_text([None, "batch", 3]) == "[?, batch, 3]"
    assert shape_text(["\x1b[2J"]) == "[\\x1b[2J]"
    assert printed(spec_text(TensorSpec("x", "float32", ("n", 4)))) == "x: float32[n, 4]\n"
    info = ModelInfo(
        MODEL_ID,
        Path("m.onnx"),
        10,
        ModelSchema(
            (TensorSpec("x", "float32", ("n", 4)),), (TensorSpec("label[/]", "int64", ("n",)),)
        ),
        name="[b]m",
    )
    table = printed(schema_table(info))
    assert "[n, 4]" in table and "[n]" in table and "label[/]" in table
    assert "[b]m (10 bytes)" in table


def offer_of(name: str, tensor: str, dim: str, task: str, addr: str) -> Offer:
    """An offer as the renderer sees it, holding what a record could not (the renderer
    must not rely on the record's checks)."""
    schema = ModelSchema(
        (TensorSpec(tensor, "float32", (dim, 4)),), (TensorSpec(tensor + "y", name, (None,)),)
    )
    record = SimpleNamespace(
        name=name, model_id=MODEL_ID, peer_id=PEER, tasks=(task,), addrs=(addr,), schema=schema
    )
    return cast(Offer, SimpleNamespace(record=record, rtt=0.0123))


@pytest.mark.parametrize("hostile", HOSTILE)
def test_find_shows_every_field_of_a_hostile_record_as_text(hostile: str) -> None:
    shown = HOSTILE[hostile]
    offers = [
        offer_of(hostile, hostile, hostile, hostile, hostile),
        offer_of("ok", "x", "n", "t", "/ip4/1.2.3.4/tcp/1"),
    ]
    for output in (printed(offers_text(offers)), styled(offers_text(offers))):
        assert_safe(output)
        assert output.count(shown) >= 5  # name, task, address, tensor names, dtype, dim
        assert "x: float32[n, 4]" in output and f"/ip4/1.2.3.4/tcp/1/p2p/{PEER}" in output
        assert "12.3 ms" in output
    assert_safe(printed(unanswered_text([hostile, PEER])))
    assert shown in printed(unanswered_text([hostile, PEER]))


@pytest.mark.parametrize("hostile", HOSTILE)
def test_call_shows_hostile_output_names_and_values_as_text(hostile: str) -> None:
    outputs = {
        hostile: np.array([hostile, "b"], dtype=object),
        "text": np.array(hostile, dtype=object),  # 0-d
        "grid": np.arange(4, dtype=np.float32).reshape(2, 2),
    }
    output = printed(outputs_table(peer_text(hostile) + " on x", outputs))
    assert_safe(output)
    assert output.count(HOSTILE[hostile]) >= 2  # title, output name
    # Values are numpy's print of them: strings by their repr, shown whole.
    assert terminal_safe(repr(hostile), limit=None) in output
    assert re.search(r"\[\[0\. 1\.\] *│\n│.* \[2\. 3\.\]\]", output)  # rows stay rows
    assert "[2, 2]" in output


def test_status_shows_served_names_and_addresses_as_text() -> None:
    status = PeerStatus(
        peer_id=PEER,
        listen_addrs=("/ip4/127.0.0.1/tcp/1\x1b[2J",),
        announced_addrs=(),
        reachability="[/]",
        swarm_key_fingerprint=None,
        models=(ServedModelStatus(MODEL_ID, "label[/]\u202e", ("t[/]",), ("[bold]p",)),),
        connections=(),
        routing_table=3,
        dht_mode="server",
        limits_hit={"stalled": 2, "streams_peer": 4},
    )
    file = StatusFile(Path("s.json"), {"pid": 7, "swarm": "\x1b[5m"}, status, True, 30.0)
    output = printed(status_text(file))
    assert_safe(output)
    for shown in ("tcp/1\\x1b[2J", "reachability [/]", "label[/]\\u202e", "t[/]", "[bold]p"):
        assert shown in output
    assert "limits hit   stalled 2, streams_peer 4" in output
    assert "swarm        \\x1b[5m" in output and "may be hung" in output


def test_error_messages_are_shown_escaped(
    config_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error naming hostile text (here a file name; a peer's error message the same)."""
    assert main(["pipeline", "run", "\x1b[31mp[/].yaml", "--input", "x=[1]"]) == 2
    error = capsys.readouterr().err
    assert_safe(error)
    assert "\\x1b[31mp[/].yaml" in error


def string_identity_model(path: Path, output: str) -> Path:
    """An ONNX model that returns its string input ``x`` [n] as ``output`` [n]."""
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], [output])
    graph = helper.make_graph(
        [node],
        "m",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info(output, TensorProto.STRING, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
async def hostile_swarm(tmp_path: Path) -> AsyncIterator[tuple[Peer, Peer]]:
    """(a provider serving a model named ``label[/]`` whose output is ``label[/]``, a
    caller), joined through a bootstrap peer on the memory network."""
    async with AsyncExitStack() as stack:
        network = await stack.enter_async_context(MemoryNetwork(seed=1))
        boot = await stack.enter_async_context(memory_peer(network))
        provider = await stack.enter_async_context(memory_peer(network, bootstrap=[boot.addrs[0]]))
        caller = await stack.enter_async_context(memory_peer(network, bootstrap=[boot.addrs[0]]))
        info = inspect_model(string_identity_model(tmp_path / "m.onnx", "label[/]"))
        model = OnnxModel(dataclasses.replace(info, name="label[/] \u202eevil"))
        provider.serve(model, tasks=["hostile"])
        assert await provider.announce() > 0
        yield provider, caller


async def test_found_records_and_outputs_that_crossed_the_network_show_as_text(
    hostile_swarm: tuple[Peer, Peer],
) -> None:
    provider, caller = hostile_swarm
    offers = await caller.find(task="hostile", timeout=10)
    assert [o.record.peer_id for o in offers] == [provider.peer_id]
    found = printed(offers_text(offers))
    assert_safe(found)
    assert "label[/] \\u202eevil" in found
    assert "inputs   x: string[n]" in found and "outputs  label[/]: string[n]" in found
    offer, outputs = await caller.call_with_offer(
        {"x": np.array(["\x1b[31mred", "[/]"], dtype=object)}, task="hostile", timeout=10
    )
    table = printed(outputs_table(peer_text(offer.record.name), outputs))
    assert_safe(table)
    assert "label[/] \\u202eevil" in table and "['\\x1b[31mred' '[/]']" in table
    assert "label[/]" in table and "[2]" in table


def p2pnet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pnet.cli", *args], capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip


@pytest.mark.slow
def test_p2pnet_find_and_call_show_hostile_names_and_symbolic_dims(
    tmp_path: Path, config_home: Path
) -> None:
    """The real commands against a provider whose file (so its record's name) is
    ``[bold red]m<RLO>`` and whose output is ``label[/]``: no MarkupError, nothing raw."""
    from test_cli import start_peer

    env = os.environ | {"XDG_CONFIG_HOME": str(config_home), "COLUMNS": "200"}
    model = string_identity_model(tmp_path / "[bold red]m\u202e.onnx", "label[/]")
    boot = start_peer(env | {"XDG_CONFIG_HOME": str(tmp_path / "boot")}, "--role", "bootstrap")
    server = start_peer(
        env | {"XDG_CONFIG_HOME": str(tmp_path / "server")},
        "--serve", str(model), "--task", "hostile", "--bootstrap", boot.address,
    )  # fmt: skip
    try:
        assert any("[bold red]m\\u202e" in line for line in server.lines)
        found = p2pnet("find", "--task", "hostile", "--bootstrap", boot.address, env=env)
        assert found.returncode == 0, found.stderr
        assert_safe(found.stdout)
        assert "[bold red]m\\u202e" in found.stdout
        assert "inputs   x: string[n]" in found.stdout
        assert "outputs  label[/]: string[n]" in found.stdout
        as_json = p2pnet(
            "find", "--task", "hostile", "--bootstrap", boot.address, "--json", env=env
        )
        (offer,) = json.loads(as_json.stdout)["offers"]  # exact values
        assert offer["name"] == "[bold red]m\u202e" and offer["inputs"][0]["shape"] == ["n"]
        assert json.loads(as_json.stdout)["unanswered"] == []

        called = p2pnet(
            "call", "--task", "hostile", "-i", "x=\x1b[31mred[/]", "--bootstrap", boot.address,
            env=env,
        )  # fmt: skip
        assert called.returncode == 0, called.stderr
        assert_safe(called.stdout)
        assert "label[/]" in called.stdout and "['\\x1b[31mred[/]']" in called.stdout
        assert "[bold red]m\\u202e" in called.stdout
    finally:
        for peer in (server, boot):
            peer.proc.send_signal(signal.SIGINT)
            assert peer.proc.wait(timeout=30) == 0


def test_log_lines_quoting_other_peers_are_escaped(
    config_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the command line's log handler writes: a peer's error message with control
    characters in it (logged with -v when a provider fails) is shown escaped."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert main(["id", "-v"]) == 0
        capsys.readouterr()
        logging.getLogger("p2pnet.discovery").info(
            "provider %s failed: %s", "12D3KooW", "\x1b[2Jbusy\nerror: fake [/]"
        )
        logged = capsys.readouterr().err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert_safe(logged)
    assert "\\x1b[2Jbusy" in logged
    first, continued = logged.splitlines()
    assert continued.index("error: fake [/]") == first.index("provider") + 2  # indented
