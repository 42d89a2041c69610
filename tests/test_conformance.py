"""``p2pnet conformance``: every check passes against p2pnet's own peer, and a peer that
breaks one rule fails that rule's check and no other (peers on the in-memory network;
the broken ones are p2pnet's peer with one protocol handler tampered with)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from memory_peers import memory_peer

from p2pnet.conformance import checks as c
from p2pnet.conformance.client import DESCRIBE, INVOKE, KAD, run_checks
from p2pnet.conformance.golden import load_vectors, vector
from p2pnet.core.address import PeerAddress
from p2pnet.core.describe import DescribeErrorReply, RecordsReply, encode_describe_message
from p2pnet.core.kad.wire import KadMessage, KadMessageReader, MessageType, encode_kad_message
from p2pnet.core.messages import (
    Cancel,
    ErrorReply,
    Forward,
    Generate,
    Invoke,
    MessageReader,
    encode_message,
)
from p2pnet.core.records import CapabilityRecord, sign_record, verify_record
from p2pnet.core.varint import try_decode_uvarint
from p2pnet.errors import P2PNetError
from p2pnet.net.identity import Identity, generate_identity
from p2pnet.net.interfaces import ByteStream, ByteStreamHandler, HostWrapper, StreamHost
from p2pnet.net.memory import MemoryNetwork
from p2pnet.peer import Peer

CHECKS = load_vectors("checks_v1")
INVOKE_VECTORS = load_vectors("invoke_v1")
KAD_VECTORS = load_vectors("kad_v1")
DESCRIBE_VECTORS = load_vectors("describe_v1")
TIMEOUT = 0.5  # what the checker waits for a stream that must end, in these tests


def _case_request(protocol: str, name: str) -> bytes:
    (case,) = [k for k in c.cases(protocol, CHECKS, _vectors(protocol)) if k.check.name == name]
    return case.request


def _vectors(protocol: str) -> dict[str, object]:
    return {"invoke": INVOKE_VECTORS, "describe": DESCRIBE_VECTORS, "kad": KAD_VECTORS}[protocol]


# --- broken peers: one protocol handler tampered with ----------------------------------------

Respond = Callable[[ByteStream, bytes, "Tamper"], Awaitable[None]]


@dataclasses.dataclass
class Tamper:
    """On ``protocol``, a stream whose first bytes ``trigger`` picks gets ``respond``
    instead of the real handler; every other stream is the real handler's."""

    protocol: str
    trigger: Callable[[bytes], bool]
    respond: Respond
    identity: Identity | None = None
    record: CapabilityRecord | None = None
    real: ByteStreamHandler | None = None


class _Replay:
    """A stream whose first reads return bytes already read from it."""

    def __init__(self, stream: ByteStream, buffered: bytes) -> None:
        self._stream = stream
        self._buffered = buffered

    @property
    def peer_id(self) -> str:
        return self._stream.peer_id

    async def read(self) -> bytes:
        if self._buffered:
            data, self._buffered = self._buffered, b""
            return data
        return await self._stream.read()

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)

    async def close(self) -> None:
        await self._stream.close()

    async def reset(self) -> None:
        await self._stream.reset()


_LARGEST_LIMIT = 4 << 20  # the largest frame limit of the three protocols (Constants)


class TamperingHost(HostWrapper):
    def __init__(self, host: StreamHost, tamper: Tamper) -> None:
        super().__init__(host)
        self.tamper = tamper

    def set_stream_handler(self, protocol: str, handler: ByteStreamHandler) -> None:
        if protocol != self.tamper.protocol:
            super().set_stream_handler(protocol, handler)
            return
        self.tamper.real = handler

        async def tampered(stream: ByteStream) -> None:
            data = b""
            while True:
                length = try_decode_uvarint(data)
                if length is not None and len(data) >= length[1] + length[0]:
                    break
                if length is not None and length[0] > _LARGEST_LIMIT:
                    break  # as a conforming peer, without waiting for the body
                chunk = await stream.read()
                if not chunk:
                    break
                data += chunk
            if self.tamper.trigger(data):
                await self.tamper.respond(stream, data, self.tamper)
            else:
                await handler(_Replay(stream, data))

        super().set_stream_handler(protocol, tampered)


async def wrong_code(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    await stream.write(b"".join(encode_message(ErrorReply(5, "unknown_model", "no")).frames()))
    await _serve_rest(stream, tamper)


async def keeps_id(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    await stream.write(b"".join(encode_message(ErrorReply(6, "protocol_error", "no")).frames()))
    await stream.reset()


async def no_reset(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    await stream.write(b"".join(encode_message(ErrorReply(0, "protocol_error", "no")).frames()))
    await _serve_rest(stream, tamper)  # and reads the next request


async def _serve_rest(stream: ByteStream, tamper: Tamper) -> None:
    assert tamper.real is not None
    await tamper.real(stream)


async def ignores_filters(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    assert tamper.real is not None
    describe_all = bytes.fromhex(vector(DESCRIBE_VECTORS, "describe-all")["hex"])
    await tamper.real(_Replay(stream, describe_all))


def _signed(tamper: Tamper, **changes: object) -> bytes:
    """The peer's own record, re-signed with ``changes``."""
    assert tamper.identity is not None and tamper.record is not None
    record = dataclasses.replace(tamper.record, **changes)  # type: ignore[arg-type]
    return sign_record(record, tamper.identity.signing_key)


async def expired_record(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    envelope = _signed(tamper, expires_at=int(time.time()) - 60)
    await stream.write(encode_describe_message(RecordsReply((envelope,))))
    await _serve_rest(stream, tamper)


async def forged_record(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    envelope = bytearray(_signed(tamper))
    envelope[-1] ^= 1  # the last byte of the signature
    await stream.write(encode_describe_message(RecordsReply((bytes(envelope),))))
    await _serve_rest(stream, tamper)


async def old_filter_bound(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    # The bound before 1.0: a models entry over 100 characters was refused.
    error = DescribeErrorReply("protocol_error", "models[0] is 128 characters; at most 100")
    await stream.write(encode_describe_message(error))
    await stream.reset()


async def junk_find_node(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    await stream.write(bytes.fromhex("03ffffff"))
    await _serve_rest(stream, tamper)


async def silent_on_malformed(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    while await stream.read():  # neither answers nor resets: waits for the caller
        pass


async def keeps_any_provider(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    reader = KadMessageReader()
    reader.receive_data(data)
    add = reader.next_message()
    assert add is not None
    while (ask := reader.next_message()) is None:
        reader.receive_data(await stream.read())
    reply = KadMessage(MessageType.GET_PROVIDERS, ask.key, provider_peers=add.provider_peers)
    await stream.write(encode_kad_message(reply))


async def refuses_after_the_body(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    # The refusal is right, but late: it waits for the body of the oversized frame,
    # until the caller closes its side.
    while await stream.read():
        pass
    if tamper.protocol == INVOKE:
        reply = b"".join(encode_message(ErrorReply(0, "payload_too_large", "too large")).frames())
        await stream.write(reply)
    elif tamper.protocol == DESCRIBE:
        error = DescribeErrorReply("payload_too_large", "too large")
        await stream.write(encode_describe_message(error))
    await stream.reset()


class _OneReply(_Replay):
    """A stream that reads as ended once one reply was written on it."""

    replied = False

    async def read(self) -> bytes:
        return b"" if self.replied else await super().read()

    async def write(self, data: bytes) -> None:
        await super().write(data)
        self.replied = True


async def one_call_per_stream(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    await _serve_rest(_OneReply(stream, data), tamper)  # then ends the stream


def _forward_in(data: bytes) -> Forward | None:
    reader = MessageReader()
    reader.receive_data(data)
    try:
        message = reader.next_message()
    except P2PNetError:
        return None
    return message if isinstance(message, Forward) else None


def is_forward(data: bytes) -> bool:
    return _forward_in(data) is not None


async def refuses_forward_as_unreadable(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    forward = _forward_in(data)
    assert forward is not None
    error = ErrorReply(forward.request_id, "protocol_error", "no")
    await stream.write(b"".join(encode_message(error).frames()))
    await _serve_rest(stream, tamper)


async def forwards_other_tensors(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    forward = _forward_in(data)
    assert forward is not None
    tensors = {name: np.full_like(value, 3) for name, value in forward.tensors.items()}
    changed = dataclasses.replace(forward, tensors=tensors)
    await _serve_rest(_Replay(stream, b"".join(encode_message(changed).frames())), tamper)


class _DropsCancel(_Replay):
    """A stream from which the Cancels a caller sends are never read."""

    async def read(self) -> bytes:
        while True:
            data = await super().read()
            reader = MessageReader()
            reader.receive_data(data)
            if not data or not isinstance(reader.next_message(), Cancel):
                return data


async def ignores_cancel(stream: ByteStream, data: bytes, tamper: Tamper) -> None:
    await _serve_rest(_DropsCancel(stream, data), tamper)


def request_id_is(request_id: int) -> Callable[[bytes], bool]:
    """Picks the streams whose first message is an Invoke or a Generate with that id."""

    def picks(data: bytes) -> bool:
        reader = MessageReader()
        reader.receive_data(data)
        try:
            message = reader.next_message()
        except P2PNetError:
            return False
        return isinstance(message, Invoke | Generate) and message.request_id == request_id

    return picks


def starts_with(request: bytes) -> Callable[[bytes], bool]:
    return lambda data: data.startswith(request)


def is_add_provider(data: bytes) -> bool:
    reader = KadMessageReader()
    reader.receive_data(data)
    message = reader.next_message()
    return message is not None and message.type == MessageType.ADD_PROVIDER


def first(protocol: str, case: str) -> Callable[[bytes], bool]:
    """Picks the streams that open with the request of ``case``."""
    return starts_with(_case_request(protocol, case))


# why the peer is broken, how, and the checks that must fail (no others)
BROKEN = [
    ("wrong error code", Tamper(INVOKE, first("invoke", "invoke-invalid-model-id"), wrong_code),
     {"invoke-invalid-model-id"}),
    ("keeps the id of a message error", Tamper(
        INVOKE, first("invoke", "invoke-deadline-zero"), keeps_id), {"invoke-deadline-zero"}),
    ("reads on after a message error", Tamper(
        INVOKE, first("invoke", "invoke-version-2"), no_reset), {"invoke-version-2"}),
    ("ignores describe filters", Tamper(
        DESCRIBE, first("describe", "describe-filtered"), ignores_filters),
     {"describe-filtered"}),
    ("refuses a model filter of 128 characters", Tamper(
        DESCRIBE, first("describe", "describe-model-filter-128"), old_filter_bound),
     {"describe-model-filter-128"}),
    ("describes an expired record", Tamper(
        DESCRIBE, first("describe", "describe-all"), expired_record),
     {"describe-records-verify"}),
    ("describes a badly signed record", Tamper(
        DESCRIBE, first("describe", "describe-all"), forged_record),
     {"describe-records-verify"}),
    ("answers FIND_NODE with junk", Tamper(
        KAD, first("kad", "kad-find-node"), junk_find_node), {"kad-find-node"}),
    ("neither answers nor resets malformed kad", Tamper(
        KAD, first("kad", "kad-malformed"), silent_on_malformed), {"kad-malformed"}),
    ("waits for the body of an oversized invoke frame", Tamper(
        INVOKE, first("invoke", "invoke-frame-too-large"), refuses_after_the_body),
     {"invoke-frame-too-large"}),
    ("waits for the body of an oversized describe frame", Tamper(
        DESCRIBE, first("describe", "describe-frame-too-large"), refuses_after_the_body),
     {"describe-frame-too-large"}),
    ("waits for the body of an oversized kad frame", Tamper(
        KAD, first("kad", "kad-frame-too-large"), refuses_after_the_body),
     {"kad-frame-too-large"}),
    ("answers one call per stream", Tamper(INVOKE, request_id_is(44), one_call_per_stream),
     {"invoke-stream-reuse"}),
    ("refuses a Forward as unreadable", Tamper(INVOKE, is_forward,
        refuses_forward_as_unreadable), {"invoke-forward-one-hop"}),
    ("forwards other tensors than the carried ones", Tamper(INVOKE, is_forward,
        forwards_other_tensors), {"invoke-forward-one-hop"}),
    ("keeps providers that name another peer", Tamper(
        KAD, is_add_provider, keeps_any_provider), {"kad-add-provider-other"}),
]  # fmt: skip


@asynccontextmanager
async def serving_peer(
    network: MemoryNetwork,
    model: Path,
    tamper: Tamper | None = None,
    tasks: tuple[str, ...] = ("tabular-classification",),
) -> AsyncIterator[Peer]:
    identity = generate_identity()
    host: StreamHost = network.add_host(identity.peer_id)
    if tamper is not None:
        tamper.identity = identity
        host = TamperingHost(host, tamper)
    peer = Peer(identity, host=host)
    peer.serve(model, tasks=tasks)
    async with peer:
        if tamper is not None:
            tamper.record = peer.services.publisher.records()[0]
        yield peer


def _failed(verdicts: list[c.Verdict]) -> set[str]:
    return {v.check.name for v in verdicts if v.outcome == c.Outcome.FAIL}


async def test_every_check_passes_against_p2pnets_own_peer(models: dict[str, Path]) -> None:
    async with MemoryNetwork(seed=1) as network, serving_peer(network, models["iris"]) as peer:
        verdicts = await run_checks(network.add_host(), PeerAddress(peer.peer_id))
    outcomes = {v.check.name: v.outcome for v in verdicts}
    assert outcomes.pop("generate") == c.Outcome.SKIP  # iris is no generative model
    assert outcomes.pop("generate-cancel") == c.Outcome.SKIP
    assert set(outcomes.values()) == {c.Outcome.PASS}, [v for v in verdicts if v.outcome != "pass"]
    assert len(outcomes) >= 25
    assert c.exit_status(verdicts) == 0


@pytest.mark.parametrize(("why", "tamper", "caught_by"), BROKEN, ids=[b[0] for b in BROKEN])
async def test_a_peer_breaking_one_rule_fails_that_check_only(
    models: dict[str, Path], why: str, tamper: Tamper, caught_by: set[str]
) -> None:
    async with MemoryNetwork(seed=2) as network:
        async with serving_peer(network, models["iris"], tamper) as peer:
            verdicts = await run_checks(
                network.add_host(), PeerAddress(peer.peer_id), timeout=TIMEOUT
            )
    assert _failed(verdicts) == caught_by
    assert c.exit_status(verdicts) == 1


async def test_a_client_only_peer_has_its_serving_checks_skipped(
    models: dict[str, Path],
) -> None:
    async with MemoryNetwork(seed=3) as network:
        host = network.add_host()
        served = network.add_host()

        async def describe_only(stream: ByteStream) -> None:
            await stream.write(encode_describe_message(RecordsReply(())))
            await stream.reset()

        served.set_stream_handler(DESCRIBE, describe_only)
        verdicts = await run_checks(host, PeerAddress(served.peer_id), timeout=TIMEOUT)
    skipped = {v.check.name for v in verdicts if v.outcome == c.Outcome.SKIP}
    assert {"invoke-unknown-model", "kad-find-node", "kad-add-provider"} <= skipped
    assert "describe-all" not in skipped


def test_the_cases_send_the_golden_vectors_and_judge_records_by_the_spec() -> None:
    # The spec, the tests and the checker read the same bytes: each case's request is
    # a golden vector or a head built from the table, never a copy.
    invoke_case = c.cases("invoke", CHECKS, INVOKE_VECTORS)[0]
    assert invoke_case.request.hex() == vector(INVOKE_VECTORS, "invoke-float32")["hex"]
    records = load_vectors("records_v1")
    envelope = bytes.fromhex(vector(records, "record-minimal")["envelope_hex"])
    verdict, _ = c.judge_records(c.RECORDS_VERIFY, [envelope], "12D3KooWnot", 0.0)
    assert verdict.outcome == c.Outcome.FAIL  # it names another peer
    assert verify_record(envelope, now=0.0).peer_id != "12D3KooWnot"


async def test_a_caller_ends_the_stream_after_an_error_reply_with_id_0() -> None:
    # §invoke/Limits and errors rule 4: ErrorReply id 0 ends the stream for the caller
    # too, even when the server (against rule 2) keeps reading it.
    from p2pnet.errors import LocalProtocolError
    from p2pnet.invoke.client import InvokeClient

    streams = 0

    async def rejects_everything(stream: ByteStream) -> None:
        nonlocal streams
        streams += 1
        reply = b"".join(encode_message(ErrorReply(0, "protocol_error", "no")).frames())
        while await stream.read():
            await stream.write(reply)

    async with MemoryNetwork(seed=4) as network:
        server = network.add_host()
        server.set_stream_handler(INVOKE, rejects_everything)
        client = InvokeClient(network.add_host())
        model = vector(INVOKE_VECTORS, "invoke-float32")["model"]
        for _ in range(2):
            with pytest.raises(LocalProtocolError):
                await client.invoke(PeerAddress(server.peer_id), model, {}, timeout=5)
    assert streams == 2


# --- --as-provider: what a client under test sends ------------------------------------------


async def test_p2pnets_own_client_passes_every_client_check(models: dict[str, Path]) -> None:
    from p2pnet.conformance.provider import ClientObserver, ObservingHost
    from p2pnet.discovery import DescribeClient

    observer = ClientObserver()
    async with MemoryNetwork(seed=5) as network:
        identity = generate_identity()
        provider = Peer(identity, host=ObservingHost(network.add_host(identity.peer_id), observer))
        info = provider.serve(models["iris"], tasks=("tabular-classification",))
        async with provider, memory_peer(network) as client:
            address = PeerAddress(provider.peer_id)
            described = await DescribeClient(client.host).describe(address, models=[info.model_id])
            assert len(described.records) == 1
            inputs = c.inputs_for(info.schema)
            for _ in range(2):
                await client.invoke(address, info.model_id, inputs)
    outcomes = {v.check.name: v.outcome for v in observer.verdicts()}
    assert set(outcomes) == set(c.CLIENT_CHECKS)
    assert set(outcomes.values()) == {c.Outcome.PASS}, observer.breaches


def _invoke(request_id: int, deadline_ms: int = 1000) -> bytes:
    model = vector(INVOKE_VECTORS, "invoke-float32")["model"]
    return b"".join(encode_message(Invoke(request_id, model, {}, deadline_ms)).frames())


@pytest.mark.parametrize(
    ("why", "invoke_bytes", "describe_bytes", "caught_by"),
    [
        ("uses id 0", _invoke(0), b"", {"client-invoke-id-nonzero"}),
        ("a second request before the reply", _invoke(1) + _invoke(2), b"",
         {"client-invoke-one-at-a-time"}),
        ("a deadline over an hour", _invoke(1, 3_600_001), b"", {"client-invoke-deadline"}),
        ("sends a reply", bytes.fromhex(vector(INVOKE_VECTORS, "error")["hex"]), b"",
         {"client-invoke-requests"}),
        ("sends bytes that are not msgpack", b"\x01\xc1", b"", {"client-invoke-decodes"}),
        ("describes without a filter", _invoke(1),
         bytes.fromhex(vector(DESCRIBE_VECTORS, "describe-all")["hex"]),
         {"client-describe-filter"}),
        ("sends a reply on describe", _invoke(1),
         bytes.fromhex(vector(DESCRIBE_VECTORS, "records-empty")["hex"]),
         {"client-describe-decodes"}),
    ],
)  # fmt: skip
def test_a_client_breaking_one_rule_fails_that_check_only(
    why: str, invoke_bytes: bytes, describe_bytes: bytes, caught_by: set[str]
) -> None:
    from p2pnet.conformance.provider import ClientObserver

    observer = ClientObserver()
    stream = observer.invoke_stream()
    for i in range(0, len(invoke_bytes), 7):  # as the bytes come, in pieces
        stream.received(invoke_bytes[i : i + 7])
    if describe_bytes:
        observer.describe_stream().received(describe_bytes)
    assert set(observer.breaches) == caught_by
    assert c.exit_status(observer.verdicts()) == (
        1 if any(CLIENT_LEVEL[name] == c.Level.MUST for name in caught_by) else 0
    )


CLIENT_LEVEL = {name: check.level for name, check in c.CLIENT_CHECKS.items()}


def test_a_request_after_its_reply_ended_is_in_order() -> None:
    from p2pnet.conformance.provider import ClientObserver

    observer = ClientObserver()
    stream = observer.invoke_stream()
    stream.received(_invoke(1))
    stream.sent(b"".join(encode_message(ErrorReply(1, "unknown_model", "no")).frames()))
    stream.received(_invoke(2))
    assert observer.breaches == {}


# --- the command ---------------------------------------------------------------------------


@pytest.mark.network
async def test_the_command_checks_a_libp2p_peer_and_prints_json(
    models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import trio

    from p2pnet.cli.app import main

    async with Peer(nat=None) as peer:
        peer.serve(models["iris"], tasks=("tabular-classification",))
        argv = ["conformance", peer.addrs[0], "--json", "--timeout", "2"]
        status = await trio.to_thread.run_sync(main, argv)
    doc = json.loads(capsys.readouterr().out)
    outcomes = {check["name"]: check["outcome"] for check in doc["checks"]}
    assert status == doc["exit_status"] == 0
    assert outcomes.pop("generate") == outcomes.pop("generate-cancel") == "skip"
    assert set(outcomes.values()) == {"pass"}, doc


@pytest.mark.parametrize(
    "argv",
    [
        ["conformance"],
        ["conformance", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWnot", "--as-provider"],
        ["conformance", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWnot", "--for", "3"],
        ["conformance", "--as-provider", "--timeout", "0"],
    ],
)
def test_the_command_refuses_options_that_do_not_go_together(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from p2pnet.cli.app import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "p2pnet: error: " in capsys.readouterr().err


def test_the_table_shows_what_a_peer_sent_as_plain_text() -> None:
    from p2pnet.cli.conformance import verdicts_table
    from p2pnet.cli.render import out

    check = c.CLIENT_CHECKS["client-invoke-requests"]
    verdict = c.Verdict(check, c.Outcome.FAIL, "[bold]x\x1b[2J")
    with out.capture() as captured:
        out.print(verdicts_table([verdict]))
    assert "[bold]x" in captured.get() and "\x1b[2J" not in captured.get()


def test_the_protocol_doc_lists_every_check_with_its_level_and_section() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    section = doc[doc.index("### Conformance") : doc.index("## Model IDs")]
    checks = [case.check for p in ("invoke", "describe", "kad") for case in
              c.cases(p, CHECKS, _vectors(p))]  # fmt: skip
    checks += [c.RECORDS_VERIFY, c.DESCRIBE_MODEL, c.INVOKE_CALL, c.INVOKE_INPUT, c.INVOKE_REUSE]
    checks += [c.INVOKE_FORWARD, c.GENERATE, c.GENERATE_CANCEL]
    checks += [c.ADD_PROVIDER, c.ADD_PROVIDER_OTHER, *c.CLIENT_CHECKS.values()]
    checks += [c.still_serving(p) for p in ("invoke", "describe", "kad")]
    for check in checks:
        row = f"| `{check.name}` | {check.level.value} | {check.section.lstrip('§')} |"
        assert row in section, row


async def test_a_generative_peer_passes_the_generate_check(
    dialogue_models: dict[str, Path],
) -> None:
    async with MemoryNetwork(seed=6) as network:
        identity = generate_identity()
        peer = Peer(identity, host=network.add_host(identity.peer_id))
        peer.serve(dialogue_models["smollm2-chat"], tasks=("chat",))
        async with peer:
            verdicts = await run_checks(network.add_host(), PeerAddress(peer.peer_id), timeout=30)
    outcomes = {v.check.name: v for v in verdicts}
    assert outcomes["generate"].outcome == c.Outcome.PASS, outcomes["generate"]
    assert "Done" in outcomes["generate"].detail
    assert outcomes["generate-cancel"].outcome == c.Outcome.PASS, outcomes["generate-cancel"]
    assert c.exit_status(verdicts) == 0


async def test_a_generative_peer_that_ignores_cancel_fails_that_check_only(
    dialogue_models: dict[str, Path],
) -> None:
    tamper = Tamper(INVOKE, request_id_is(48), ignores_cancel)
    async with MemoryNetwork(seed=7) as network:
        async with serving_peer(
            network, dialogue_models["smollm2-chat"], tamper, ("chat",)
        ) as peer:
            verdicts = await run_checks(network.add_host(), PeerAddress(peer.peer_id), timeout=30)
    assert _failed(verdicts) == {"generate-cancel"}
    (cancel,) = [v for v in verdicts if v.check.name == "generate-cancel"]
    assert "ran to max_tokens" in cancel.detail


def test_the_checks_and_verdicts_do_no_io() -> None:
    import ast

    import p2pnet.conformance.checks as pure

    tree = ast.parse(Path(pure.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}  # fmt: skip
    imported |= {
        (n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
    }
    assert not imported & {"trio", "libp2p", "socket", "os", "time", "onnxruntime"}


@pytest.mark.network
@pytest.mark.slow
async def test_the_command_as_provider_judges_a_client_that_calls_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json
    import re

    import numpy as np
    import trio

    from p2pnet.cli.app import main

    argv = ["conformance", "--as-provider", "--for", "15", "--json"]  # ample for one call
    async with trio.open_nursery() as nursery:
        done = trio.Event()
        status: list[int] = []

        async def command() -> None:
            status.append(await trio.to_thread.run_sync(main, argv))
            done.set()

        nursery.start_soon(command)
        out = err = ""
        while "/p2p/" not in out or "bafk" not in err:  # the address, then the model ID
            await trio.sleep(0.05)
            captured = capsys.readouterr()
            out, err = out + captured.out, err + captured.err
        address = out.split()[0]
        (model,) = re.findall(r"bafk\w+", err)
        async with Peer(nat=None) as client:
            outputs = await client.invoke(address, model, {"x": np.arange(3, dtype="float32")})
        assert outputs["y"].tolist() == [0, 1, 2]
        await done.wait()
    report = json.loads(capsys.readouterr().out)
    outcomes = {c["name"]: c["outcome"] for c in report["checks"]}
    assert status == [0]
    assert outcomes["client-invoke-decodes"] == "pass"
    assert outcomes["client-describe-filter"] == "skip"  # the client described nothing


@pytest.mark.parametrize(
    ("replies", "outcome"),
    [
        (["chunk", "chunk", "cancelled"], c.Outcome.PASS),
        (["chunk", "length"], c.Outcome.FAIL),  # ran to max_tokens: the Cancel was ignored
        (["chunk", "eos"], c.Outcome.SKIP),  # ended of itself first, as the rule allows
        (["length"], c.Outcome.SKIP),  # no Chunk came, so no Cancel was sent
        (["chunk", "chunk"], c.Outcome.FAIL),  # no Done in time
        (["chunk", "error"], c.Outcome.FAIL),
    ],
)
def test_the_cancel_judge_tells_a_cancelled_reply_from_an_ignored_cancel(
    replies: list[str], outcome: c.Outcome
) -> None:
    from p2pnet.core.generation import GenerationSummary
    from p2pnet.core.messages import Chunk, Done

    def exchange(kind: str) -> c.Exchange:
        if kind == "chunk":
            return c.Exchange(reply=Chunk(48, "a", (1,)))
        if kind == "error":
            return c.Exchange(reply=ErrorReply(48, "internal", "no"))
        return c.Exchange(reply=Done(48, GenerationSummary(kind, 5, 2)))  # type: ignore[arg-type]

    exchanges = [exchange(kind) for kind in replies]
    if replies[-1] == "chunk":
        exchanges.append(c.Exchange(ending="timeout"))
    verdict = c.judge_cancel(c.GENERATE_CANCEL, 48, 64, exchanges)
    assert verdict.outcome == outcome, verdict
