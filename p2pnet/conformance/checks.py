"""The conformance checks of Protocol 1.0 and their verdicts, without I/O.

A ``Check`` names what it checks, the section of docs/protocol.md that says so, and
whether the text says MUST or SHOULD. The data-driven ones (``Case``) come from
``vectors/checks_v1.json``: the bytes to send (a golden vector by name, a msgpack head,
or raw hex) and what must come back. The runner (``client.py``) sends them and hands
back what it saw (``Exchange``, ``Observed``); the functions here turn that into a
``Verdict``. Only a failed MUST check makes ``exit_status`` non-zero.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
import numpy as np

from p2pnet.core.describe import DescribeErrorReply, DescribeReader, DescribeRequest, RecordsReply
from p2pnet.core.kad.wire import KadMessage, KadMessageReader, MessageType
from p2pnet.core.messages import Chunk, Done, ErrorReply, Forward, ForwardResult, Invoke, Result
from p2pnet.core.records import CapabilityRecord, decode_record, verify_record
from p2pnet.core.schema import ModelSchema
from p2pnet.core.varint import encode_uvarint
from p2pnet.errors import P2PNetError

__all__ = [
    "ADD_PROVIDER",
    "ADD_PROVIDER_OTHER",
    "CLIENT_CHECKS",
    "DESCRIBE_MODEL",
    "GENERATE",
    "GENERATE_CANCEL",
    "INVOKE_CALL",
    "INVOKE_FORWARD",
    "INVOKE_INPUT",
    "INVOKE_REUSE",
    "RECORDS_VERIFY",
    "Case",
    "Check",
    "Ending",
    "Exchange",
    "Level",
    "Observed",
    "Outcome",
    "Verdict",
    "cases",
    "exit_status",
    "inputs_for",
    "judge_add_provider",
    "judge_call",
    "judge_cancel",
    "judge_case",
    "judge_describe_model",
    "judge_forward",
    "judge_generation",
    "judge_records",
    "judge_reuse",
    "provider_key",
    "still_serving",
]


class Level(enum.StrEnum):
    """How the spec states a rule: a failed MUST check fails the run, a SHOULD only warns."""

    MUST = "MUST"
    SHOULD = "SHOULD"


class Outcome(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Check:
    """One rule of the spec: ``name`` (stable, for scripts), the protocol it is about,
    the ``section`` of docs/protocol.md that states it, its ``level``, and ``what`` a
    conforming peer does."""

    name: str
    protocol: str
    section: str
    level: Level
    what: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """A check's result; ``detail`` says what was seen (for a skip: why)."""

    check: Check
    outcome: Outcome
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.check.name,
            "protocol": self.check.protocol,
            "section": self.check.section,
            "level": self.check.level.value,
            "outcome": self.outcome.value,
            "detail": self.detail,
        }


Ending = Literal["closed", "reset", "timeout"]


@dataclass(frozen=True, slots=True)
class Exchange:
    """What came back on a stream: the first message read (``reply``), or how reading
    stopped without one (``ending``), or why the bytes could not be read (``unreadable``)."""

    reply: object | None = None
    ending: Ending | None = None
    unreadable: str | None = None

    def seen(self) -> str:
        if self.unreadable is not None:
            return f"an unreadable reply ({self.unreadable})"
        if self.reply is not None:
            return _describe(self.reply)
        return {"closed": "the stream closed", "reset": "the stream reset"}.get(
            self.ending or "timeout", "no reply in time"
        )


@dataclass(frozen=True, slots=True)
class Observed:
    """A case's exchange, and what the follow-up request on the same stream got
    (``after``: None when the case does not look)."""

    first: Exchange
    after: Exchange | None


@dataclass(frozen=True, slots=True)
class Case:
    """A data-driven check: the bytes it sends, the follow-up request, and what must come."""

    check: Check
    request: bytes
    follow_up: bytes
    expect: Mapping[str, Any]


def cases(protocol: str, checks: Mapping[str, Any], vectors: Mapping[str, Any]) -> list[Case]:
    """The cases of ``protocol`` ("invoke", "describe", "kad") in ``checks`` (the parsed
    checks_v1.json), their bytes taken from ``vectors`` (the parsed golden vector file of
    that protocol).

    Raises:
        KeyError: a case names a vector the file does not hold.
    """
    by_name = {v["name"]: v for v in vectors["vectors"]}
    follow_up = bytes.fromhex(by_name[checks["follow_up"][protocol]]["hex"])
    made = []
    for entry in checks[protocol]:
        check = Check(
            entry["name"], protocol, entry["section"], Level(entry["level"]), entry["what"]
        )
        made.append(Case(check, _request(entry["send"], by_name), follow_up, entry["expect"]))
    return made


def _request(send: Mapping[str, Any], vectors: Mapping[str, Mapping[str, Any]]) -> bytes:
    if "vector" in send:
        return bytes.fromhex(vectors[send["vector"]]["hex"])
    if "head" in send:
        body: bytes = msgpack.packb(send["head"], use_bin_type=True)
        return encode_uvarint(len(body)) + body
    return bytes.fromhex(send["hex"])


def judge_case(case: Case, observed: Observed) -> Verdict:
    """The verdict on what a case's request got."""
    problem = _first_problem(case.check.protocol, case.expect, observed.first)
    if problem is None:
        problem = _content_problem(case, observed.first.reply)
    if problem is None:
        problem = _after_problem(case, observed.after)
    if problem is not None:
        return Verdict(case.check, Outcome.FAIL, problem)
    detail = observed.first.seen()
    if case.expect.get("after") == "ends" and observed.after is not None:
        detail += f"; then {observed.after.seen()}"
    return Verdict(case.check, Outcome.PASS, detail)


def _content_problem(case: Case, reply: object) -> str | None:
    """What is wrong with a reply of the right kind: a kad response without the request's
    key, described records that do not match the request's filters."""
    if isinstance(reply, KadMessage) and case.expect.get("key"):
        reader = KadMessageReader()
        reader.receive_data(case.request)
        request = reader.next_message()
        if request is not None and reply.key != request.key:
            return f"the response's key is {reply.key.hex()[:80]}, not the request's"
    if isinstance(reply, RecordsReply):
        reader_d = DescribeReader()
        reader_d.receive_data(case.request)
        asked = reader_d.next_message()
        if not isinstance(asked, DescribeRequest):
            return None
        for envelope in reply.records:
            try:
                record = decode_record(msgpack.unpackb(envelope)[0])
            except (ValueError, TypeError, IndexError, P2PNetError, msgpack.UnpackException):
                return "a described envelope that does not decode as a record"
            if not asked.matches(record):
                return f"a record of {record.model_id} that does not match the filters"
    return None


def _first_problem(protocol: str, expect: Mapping[str, Any], got: Exchange) -> str | None:
    reply = got.reply
    if protocol == "invoke":
        if not isinstance(reply, ErrorReply):
            return f"expected ErrorReply {expect['code']}, got {got.seen()}"
        if reply.code != expect["code"] or reply.request_id != expect["id"]:
            return (
                f"expected ErrorReply {expect['code']} with id {expect['id']}, "
                f"got {reply.code} with id {reply.request_id}"
            )
        return None
    if protocol == "describe":
        if expect["reply"] == "records":
            if not isinstance(reply, RecordsReply):
                return f"expected a RecordsReply, got {got.seen()}"
            return None
        if not isinstance(reply, DescribeErrorReply) or reply.code != expect["code"]:
            return f"expected DescribeErrorReply {expect['code']}, got {got.seen()}"
        return None
    wanted = expect["reply"]
    if wanted is None:
        if reply is not None or got.unreadable is not None:
            return f"expected no response, got {got.seen()}"
        if expect.get("ended") and got.ending == "timeout":
            return "the stream stayed open: the peer waited instead of resetting it"
        return None
    if not isinstance(reply, KadMessage) or reply.type.name != wanted:
        return f"expected a {wanted} response, got {got.seen()}"
    return None


def _after_problem(case: Case, after: Exchange | None) -> str | None:
    rule = case.expect.get("after", "any")
    if rule == "any" or after is None:
        return None
    if rule == "ends":
        if after.reply is not None or after.unreadable is not None:
            return f"the stream was still read: the next request got {after.seen()}"
        if after.ending == "timeout":
            return "the stream stayed open: the next request got no answer and no end"
        return None
    reply = after.reply
    if case.check.protocol == "invoke":
        ok = isinstance(reply, Result | ErrorReply) and reply.request_id == _invoke_id(
            case.follow_up
        )
    elif case.check.protocol == "describe":
        ok = isinstance(reply, RecordsReply)
    else:
        ok = isinstance(reply, KadMessage)
    if ok:
        return None
    return f"the stream was not usable after it: the next request got {after.seen()}"


def _invoke_id(frame: bytes) -> int:
    """The id in the head of a one-frame invoke message (a golden vector)."""
    head = msgpack.unpackb(frame[_varint_length(frame) :], strict_map_key=False)
    return int(head["id"])


def _varint_length(data: bytes) -> int:
    return next(i + 1 for i, byte in enumerate(data) if byte < 0x80)


def _describe(message: object) -> str:
    if isinstance(message, ErrorReply):
        return f"ErrorReply {message.code} with id {message.request_id}"
    if isinstance(message, DescribeErrorReply):
        return f"DescribeErrorReply {message.code}"
    if isinstance(message, RecordsReply):
        return f"a RecordsReply of {len(message.records)} record(s)"
    if isinstance(message, KadMessage):
        return f"a {message.type.name} response"
    if isinstance(message, Result):
        return f"a Result with id {message.request_id}"
    return type(message).__name__


# --- the checks built at run time from what the peer serves ------------------------------

RECORDS_VERIFY = Check(
    "describe-records-verify",
    "describe",
    "§Capability records/Verification; §describe/What a caller checks",
    Level.MUST,
    "every record the peer describes verifies (size, structure, key, signature, expiry), "
    "names this peer, and has a sane schema",
)
DESCRIBE_MODEL = Check(
    "describe-served-model",
    "describe",
    "§describe/Messages",
    Level.MUST,
    "a request for one served model gets that model's record and no other",
)
INVOKE_CALL = Check(
    "invoke-call",
    "invoke",
    "§invoke/Messages; Limits and errors rule 3",
    Level.MUST,
    "an Invoke of a served model with inputs of its schema gets a Result with the "
    "request's id and the schema's outputs",
)
INVOKE_INPUT = Check(
    "invoke-invalid-input",
    "invoke",
    "§invoke/Limits and errors rule 3",
    Level.MUST,
    "an Invoke of a served model without its inputs gets invalid_input with its id",
)
INVOKE_REUSE = Check(
    "invoke-stream-reuse",
    "invoke",
    "§invoke/Limits and errors rules 3, 5",
    Level.MUST,
    "two Invokes of a served model sent one after another on one stream, the second "
    "once the first's Result is read, each get a Result with their own id",
)
INVOKE_FORWARD = Check(
    "invoke-forward-one-hop",
    "invoke",
    "§invoke/Messages (Forward); Implementing p2pnet in another language",
    Level.MUST,
    "a Forward of one hop, a served model on this peer, gets a ForwardResult with its id, "
    "the outputs of the plain Invoke with the same inputs (named <step>.<output>) and a "
    "trace of that hop; or, from a peer that does not forward, unknown_model with its id",
)
GENERATE = Check(
    "generate",
    "invoke",
    "§invoke/Streamed generation",
    Level.MUST,
    "a Generate of a served generative model gets Chunks and a Done with its id",
)
GENERATE_CANCEL = Check(
    "generate-cancel",
    "invoke",
    "§invoke/Streamed generation (Cancel); Done",
    Level.MUST,
    "a Cancel sent after the first Chunk of a Generate ends the reply with Done, finish "
    "cancelled (or how it ended, if it ended of itself first)",
)
ADD_PROVIDER = Check(
    "kad-add-provider",
    "kad",
    "§kad/Lookup, provide and republish (Provide step 3); Streams and frames rule 2",
    Level.MUST,
    "ADD_PROVIDER naming the sender is kept: GET_PROVIDERS for the key, sent next on the "
    "same stream, names the sender",
)
ADD_PROVIDER_OTHER = Check(
    "kad-add-provider-other",
    "kad",
    "§kad/Lookup, provide and republish (Provide step 3)",
    Level.MUST,
    "ADD_PROVIDER naming another peer is not kept: GET_PROVIDERS does not name it",
)


def still_serving(protocol: str) -> Check:
    """The check that the peer answers a new stream of ``protocol`` after the bad ones."""
    section = {
        "invoke": "§invoke/Limits and errors rule 7",
        "describe": "§describe/Errors",
        "kad": "§kad/Streams and frames rule 5",
    }[protocol]
    return Check(
        f"{protocol}-still-serving",
        protocol,
        section,
        Level.MUST,
        "after every bad request above, a new stream is answered: bad bytes cost at most "
        "their own stream",
    )


def judge_records(
    check: Check, envelopes: Sequence[bytes], peer_id: str, now: float
) -> tuple[Verdict, list[CapabilityRecord]]:
    """Verify every envelope at ``now`` (unix seconds): the verdict, and the records."""
    if not envelopes:
        return Verdict(check, Outcome.SKIP, "the peer describes no record"), []
    records = []
    for envelope in envelopes:
        try:
            record = verify_record(envelope, now=now)
        except P2PNetError as exc:
            return Verdict(check, Outcome.FAIL, f"{exc.code}: {exc}"), []
        if record.peer_id != peer_id:
            return Verdict(check, Outcome.FAIL, f"a record names peer {record.peer_id}"), []
        if not record.schema.inputs or not record.schema.outputs:
            return Verdict(check, Outcome.FAIL, f"{record.model_id}: a schema without tensors"), []
        records.append(record)
    return Verdict(check, Outcome.PASS, f"{len(records)} record(s) verify"), records


def judge_describe_model(check: Check, model_id: str, got: Exchange, now: float) -> Verdict:
    if not isinstance(got.reply, RecordsReply):
        return Verdict(check, Outcome.FAIL, f"expected a RecordsReply, got {got.seen()}")
    request = DescribeRequest((model_id,))
    models = []
    for envelope in got.reply.records:
        try:
            record = verify_record(envelope, now=now)
        except P2PNetError as exc:
            return Verdict(check, Outcome.FAIL, f"{exc.code}: {exc}")
        if not request.matches(record):
            return Verdict(check, Outcome.FAIL, f"a record of {record.model_id} too")
        models.append(record.model_id)
    if not models:
        return Verdict(check, Outcome.FAIL, f"no record of {model_id}")
    return Verdict(check, Outcome.PASS, f"{len(models)} record(s), all of that model")


_DTYPES = {
    "bool": np.bool_, "int8": np.int8, "int16": np.int16, "int32": np.int32,
    "int64": np.int64, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "float16": np.float16, "float32": np.float32, "float64": np.float64,
}  # fmt: skip


def inputs_for(schema: ModelSchema) -> dict[str, np.ndarray[Any, Any]]:
    """Zeros (empty strings) of each input's dtype and shape, a free dimension being 1."""
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    for spec in schema.inputs:
        shape = tuple(1 if not isinstance(d, int) else d for d in spec.shape)
        if spec.dtype == "string":
            inputs[spec.name] = np.full(shape, "", dtype=object)
        else:
            inputs[spec.name] = np.zeros(shape, dtype=_DTYPES[spec.dtype])
    return inputs


def judge_call(check: Check, request: Invoke, schema: ModelSchema, got: Exchange) -> Verdict:
    reply = got.reply
    if not isinstance(reply, Result) or reply.request_id != request.request_id:
        wanted_id = request.request_id
        return Verdict(
            check, Outcome.FAIL, f"expected a Result with id {wanted_id}, got {got.seen()}"
        )
    wanted = {t.name for t in schema.outputs}
    if set(reply.outputs) != wanted:
        return Verdict(
            check, Outcome.FAIL, f"outputs {sorted(reply.outputs)}, not {sorted(wanted)}"
        )
    return Verdict(check, Outcome.PASS, f"a Result with id {reply.request_id}")


def judge_reuse(
    check: Check, requests: Sequence[Invoke], schema: ModelSchema, replies: Sequence[Exchange]
) -> Verdict:
    """The replies, in order, to ``requests`` sent one after another on one stream: each a
    Result with its request's id and the schema's outputs (``replies`` stops at the
    first that is not)."""
    for number, (request, got) in enumerate(zip(requests, replies, strict=False), 1):
        verdict = judge_call(check, request, schema, got)
        if verdict.outcome != Outcome.PASS:
            return Verdict(check, Outcome.FAIL, f"request {number} of {len(requests)}: "
                           f"{verdict.detail}")  # fmt: skip
    if len(replies) < len(requests):
        return Verdict(check, Outcome.FAIL, f"{len(replies)} of {len(requests)} replies")
    ids = ", ".join(str(r.request_id) for r in requests)
    return Verdict(check, Outcome.PASS, f"Results with ids {ids} on one stream")


def judge_forward(check: Check, request: Forward, plain: Exchange, got: Exchange) -> Verdict:
    """A one-hop ``request``'s reply (``got``), against the plain Invoke's (``plain``) of
    the same model and inputs."""
    (hop,) = request.hops
    if not isinstance(plain.reply, Result):
        return Verdict(check, Outcome.SKIP, f"the plain call got {plain.seen()}")
    reply = got.reply
    if isinstance(reply, ErrorReply) and reply.request_id == request.request_id:
        if reply.code == "unknown_model":
            return Verdict(check, Outcome.PASS, "unknown_model: the peer does not forward")
        return Verdict(check, Outcome.FAIL, f"expected a ForwardResult or unknown_model, got "
                       f"{got.seen()}")  # fmt: skip
    if not isinstance(reply, ForwardResult) or reply.request_id != request.request_id:
        return Verdict(check, Outcome.FAIL, f"expected a ForwardResult with id "
                       f"{request.request_id}, got {got.seen()}")  # fmt: skip
    wanted = {f"{hop.step}.{name}": value for name, value in plain.reply.outputs.items()}
    if set(reply.outputs) != set(wanted):
        return Verdict(check, Outcome.FAIL, f"outputs {sorted(reply.outputs)}, not "
                       f"{sorted(wanted)}")  # fmt: skip
    for name, value in wanted.items():
        other = np.asarray(reply.outputs[name])
        mine = np.asarray(value)
        if other.dtype != mine.dtype or not np.array_equal(other, mine):
            return Verdict(check, Outcome.FAIL, f"{name} differs from the plain call's")
    steps = [(t.step, t.model_id) for t in reply.trace]
    if steps != [(hop.step, hop.model_id)]:
        return Verdict(check, Outcome.FAIL, f"a trace of {steps}, not of the one hop")
    return Verdict(check, Outcome.PASS, "a ForwardResult with the plain call's outputs")


def _chunks_then_done(
    request_id: int, replies: Sequence[Exchange]
) -> tuple[int, Done | None, Exchange | None]:
    """The Chunks with ``request_id`` at the start of ``replies``, counted, then what came
    next: its Done (and None), or the first other message (None and its exchange), or
    neither if the replies ended there."""
    chunks = 0
    for got in replies:
        reply = got.reply
        if isinstance(reply, Chunk) and reply.request_id == request_id:
            chunks += 1
            continue
        if isinstance(reply, Done) and reply.request_id == request_id:
            return chunks, reply, None
        return chunks, None, got
    return chunks, None, None


def judge_generation(check: Check, request_id: int, replies: Sequence[Exchange]) -> Verdict:
    """The messages a Generate got, in order: Chunks with its id, then a Done with it."""
    chunks, done, other = _chunks_then_done(request_id, replies)
    if done is not None:
        return Verdict(check, Outcome.PASS, f"{chunks} Chunk(s), then Done ({done.summary.finish})")
    if other is not None:
        return Verdict(check, Outcome.FAIL, f"after {chunks} Chunk(s): {other.seen()}")
    return Verdict(check, Outcome.FAIL, f"{chunks} Chunk(s) and no Done")


def judge_cancel(
    check: Check, request_id: int, max_tokens: int, replies: Sequence[Exchange]
) -> Verdict:
    """The messages a Generate of at most ``max_tokens`` got, a Cancel having been sent
    after the first Chunk: Chunks with its id, then Done, finish ``cancelled``. A reply
    that ended of itself first (an end token, a stop string, a full context) is allowed:
    the check is then skipped; one that ran to ``max_tokens`` ignored the Cancel."""
    chunks, done, other = _chunks_then_done(request_id, replies)
    if other is not None:
        return Verdict(check, Outcome.FAIL, f"after {chunks} Chunk(s): {other.seen()}")
    if done is None:
        if chunks == 0:
            return Verdict(check, Outcome.SKIP, "no Chunk came to send the Cancel after")
        return Verdict(check, Outcome.FAIL, f"{chunks} Chunk(s) and no Done")
    finish = done.summary.finish
    if chunks == 0:
        return Verdict(check, Outcome.SKIP, f"Done ({finish}) before any Chunk: no Cancel "
                       "was sent")  # fmt: skip
    if finish == "cancelled":
        return Verdict(check, Outcome.PASS, f"{chunks} Chunk(s), then Done (cancelled)")
    if finish == "length":
        return Verdict(check, Outcome.FAIL, f"the reply ran to max_tokens ({max_tokens}) "
                       f"after the Cancel: Done ({finish})")  # fmt: skip
    return Verdict(check, Outcome.SKIP, f"the reply ended of itself ({finish}) before the "
                   "Cancel took effect")  # fmt: skip


def provider_key(seed: bytes) -> bytes:
    """A provider key (a sha2-256 multihash) nobody else provides: that of ``seed``."""
    return b"\x12\x20" + hashlib.sha256(b"/p2pnet/conformance/" + seed).digest()


def judge_add_provider(check: Check, named: str, got: Exchange, *, kept: bool) -> Verdict:
    """GET_PROVIDERS after an ADD_PROVIDER naming ``named``: listed iff ``kept``."""
    reply = got.reply
    if not isinstance(reply, KadMessage) or reply.type != MessageType.GET_PROVIDERS:
        return Verdict(check, Outcome.FAIL, f"expected a GET_PROVIDERS response, got {got.seen()}")
    listed = any(p.peer_id == named for p in reply.provider_peers)
    if listed == kept:
        return Verdict(check, Outcome.PASS, "listed" if kept else "not listed")
    return Verdict(check, Outcome.FAIL, "not listed" if kept else f"{named} listed")


# --- what a client under test must do (``--as-provider``) ----------------------------------

CLIENT_CHECKS: dict[str, Check] = {
    c.name: c
    for c in (
        Check(
            "client-invoke-decodes",
            "invoke",
            "§invoke/Frames, Messages, Tensors",
            Level.MUST,
            "every message the client sends on invoke streams decodes",
        ),
        Check(
            "client-invoke-requests",
            "invoke",
            "§invoke/Limits and errors rule 3",
            Level.MUST,
            "the client sends requests only (Invoke, Forward, Generate, Cancel, CloseSession)",
        ),
        Check(
            "client-invoke-one-at-a-time",
            "invoke",
            "§invoke/Limits and errors rule 4",
            Level.MUST,
            "the client sends no request before the reply to the previous one ended (Cancel "
            "excepted)",
        ),
        Check(
            "client-invoke-id-nonzero",
            "invoke",
            "§invoke/Limits and errors rule 4",
            Level.SHOULD,
            "the client does not use id 0",
        ),
        Check(
            "client-invoke-deadline",
            "invoke",
            "§invoke/Messages (deadline_ms); Constants",
            Level.SHOULD,
            "deadline_ms is at most an hour (3,600,000 ms); servers may cap their wait lower",
        ),
        Check(
            "client-describe-decodes",
            "describe",
            "§describe/Frames, Messages",
            Level.MUST,
            "every message the client sends on describe streams is a DescribeRequest that decodes",
        ),
        Check(
            "client-describe-filter",
            "describe",
            "§describe/Messages",
            Level.SHOULD,
            "every DescribeRequest names a model or a task",
        ),
    )
}


def exit_status(verdicts: Sequence[Verdict]) -> int:
    """0 iff no MUST check failed."""
    failed = any(v.outcome == Outcome.FAIL and v.check.level == Level.MUST for v in verdicts)
    return 1 if failed else 0
