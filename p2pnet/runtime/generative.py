"""Generative models: a decoder ONNX file with a key/value cache, its tokenizer inside it,
run token by token; sessions that keep a conversation's cache between turns.

A model file is generative when its ONNX metadata holds ``p2pnet.generation`` (the
cache layout, context length, end tokens, chat format: ``p2pnet.core.generation``)
and ``p2pnet.tokenizer`` (a Hugging Face ``tokenizer.json``); ``p2pnet.prompt``, when
present, gives the model a prompt of its own. Everything that changes an output is in
the one file, so its model ID covers it (docs/models.md).

Each decoding step (the prompt at once, then one token at a time) runs in a worker
thread through ``RunSlots``: steps of concurrent generations take turns, at most
``max_concurrency`` at once. Between two steps the caller's cancel is looked at, so a
cancelled generation stops within one token.

A generative model is also an ordinary model (``ServedModel``): called with text
tensors it answers with text tensors, greedily, so pipelines and tensor clients use
it unchanged. Its schema: ``prompt`` string [N] -> ``text`` string [N] (each row one
user message), or the inputs and output its own prompt names.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import trio
from tokenizers import Tokenizer

from p2pnet.core.generation import (
    DEFAULT_SESSION_LIMITS,
    GenerationCard,
    GenerationFacts,
    GenerationParams,
    GenerationSummary,
    Prompt,
    PromptTemplate,
    SessionLimits,
    TextStream,
    choose_token,
    parse_generation_facts,
    parse_prompt_template,
)
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.schema import ModelSchema, TensorSpec, check_inputs
from p2pnet.errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelExecutionError,
    ModelFileError,
    PeerBusyError,
    SessionLimitError,
    UnknownSessionError,
)
from p2pnet.runtime.onnx_model import (
    ONNX_RUNTIME,
    OnnxModel,
    file_model_id,
    inspect_model,
    read_model_proto,
)
from p2pnet.runtime.served import RunSlots

__all__ = [
    "GENERATION_KEY",
    "PROMPT_KEY",
    "TOKENIZER_KEY",
    "GenerativeFile",
    "GenerativeModel",
    "SessionLimits",
    "SessionStore",
    "inspect_generative",
    "inspect_model_file",
    "is_generative",
    "load_model_file",
]

log = logging.getLogger(__name__)

GENERATION_KEY: Final = "p2pnet.generation"
TOKENIZER_KEY: Final = "p2pnet.tokenizer"
PROMPT_KEY: Final = "p2pnet.prompt"
# Greedy replies of the tensor view (a row of ``prompt``) stop after this many tokens
# unless the model's own prompt says otherwise.
TENSOR_VIEW_MAX_TOKENS: Final = 256

Emit = Callable[[str, list[int]], Awaitable[None]]
"""Called with each piece of a reply as it is produced: (text, token IDs)."""


def _metadata(proto: onnx.ModelProto) -> dict[str, str]:
    """A model file's metadata entries (the metadata comes after the graph in the file,
    so reading it parses the whole protobuf: a second or so for 90 MB)."""
    return {prop.key: prop.value for prop in proto.metadata_props}


def load_model_file(
    path: str | Path,
    *,
    max_concurrency: int = 2,
    threads: int | None = None,
    sessions: SessionLimits = DEFAULT_SESSION_LIMITS,
) -> OnnxModel | GenerativeModel:
    """Load an ONNX model file: a GenerativeModel if its metadata says it generates
    (``max_concurrency`` decoding steps at once, of one thread each: steps of concurrent
    generations take turns; its sessions kept within ``sessions``), an OnnxModel
    otherwise (``max_concurrency`` runs at once, of ``threads`` threads each: see
    ``OnnxModel``).

    Raises:
        ModelFileError: the file cannot be read or loaded.
    """
    proto = read_model_proto(path)
    metadata = _metadata(proto)
    if is_generative(metadata):
        return GenerativeModel(
            path,
            metadata=metadata,
            sessions=SessionStore(sessions),
            max_concurrency=max_concurrency,
        )
    return OnnxModel(inspect_model(path, proto), max_concurrency=max_concurrency, threads=threads)


@dataclass(frozen=True, slots=True)
class GenerativeFile:
    """What a generative model file says, read without loading it: its ModelInfo (the
    text-in text-out schema and the record's generation card), its facts, its own prompt
    if any, and its tokenizer (the JSON text and its SHA-256)."""

    info: ModelInfo
    facts: GenerationFacts
    prompt: PromptTemplate | None
    tokenizer_json: str
    tokenizer_digest: str


def inspect_generative(
    path: str | Path, metadata: Mapping[str, str] | None = None
) -> GenerativeFile:
    """Read a generative model file's metadata (``metadata``: already read).

    Raises:
        ModelFileError: the file cannot be read, is not generative, or its metadata is
            wrong (the message names the key).
    """
    path = Path(path)
    metadata = _metadata(read_model_proto(path)) if metadata is None else metadata
    if not is_generative(metadata):
        raise ModelFileError(f"{path} is not a generative model (no {GENERATION_KEY})")
    facts = parse_generation_facts(metadata[GENERATION_KEY])
    if TOKENIZER_KEY not in metadata:
        raise ModelFileError(f"{path}: a generative model needs {TOKENIZER_KEY}")
    tokenizer_json = metadata[TOKENIZER_KEY]
    digest = "sha256:" + hashlib.sha256(tokenizer_json.encode()).hexdigest()
    prompt = parse_prompt_template(metadata[PROMPT_KEY]) if PROMPT_KEY in metadata else None
    names: tuple[str, ...] = ("prompt",)
    output = "text"
    if prompt is not None:
        names, output = prompt.inputs, prompt.output
    schema = ModelSchema(
        inputs=tuple(TensorSpec(name, "string", ("N",)) for name in names),
        outputs=(TensorSpec(output, "string", ("N",)),),
    )
    model_id, size = file_model_id(path)
    card = GenerationCard(
        facts.context_length,
        facts.eos_token_ids,
        facts.chat.turn,
        facts.chat.generation_prompt,
        digest,
    )
    info = ModelInfo(
        model_id,
        path.resolve(),
        size,
        schema,
        name=facts.name or path.stem,
        runtime=ONNX_RUNTIME,
        generation=card,
    )
    return GenerativeFile(info, facts, prompt, tokenizer_json, digest)


def inspect_model_file(path: str | Path) -> ModelInfo:
    """A model file's ModelInfo, whether it generates (``inspect_generative``) or not
    (``inspect_model``).

    Raises:
        ModelFileError: the file cannot be read or is not a model p2pnet serves.
    """
    proto = read_model_proto(path)
    metadata = _metadata(proto)
    if is_generative(metadata):
        return inspect_generative(path, metadata).info
    return inspect_model(path, proto)


def is_generative(metadata: Mapping[str, str]) -> bool:
    """True if a model file's metadata marks it as a generative model."""
    return GENERATION_KEY in metadata


@dataclass(eq=False)
class KvState:
    """A conversation's cache: per layer (key, value) arrays [1, heads, length, dim], the
    tokens they hold, and ``pending``: tokens of the last reply not fed to the model yet
    (the model has not seen its own last token until the next turn)."""

    past: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]
    tokens: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.past)


@dataclass(eq=False)
class Session:
    """An open session: its caller, its cache, when it was last used, and whether a turn
    is running on it now."""

    session_id: str
    caller: str
    state: KvState
    last_used: float
    busy: bool = False


class SessionStore:
    """The open sessions of one model, with ``limits``; time is passed in (``now``).

    Sessions belong to the caller that opened them: another caller asking for one is
    told it does not exist, as for an expired one.
    """

    def __init__(self, limits: SessionLimits = DEFAULT_SESSION_LIMITS) -> None:
        self.limits = limits
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def expire(self, now: float) -> int:
        """Drop the sessions idle for longer than the idle timeout; how many went."""
        idle = [
            s
            for s in self._sessions.values()
            if not s.busy and now - s.last_used > self.limits.idle_timeout
        ]
        for session in idle:
            del self._sessions[session.session_id]
        return len(idle)

    def open(self, caller: str, state: KvState, now: float) -> Session:
        """A new session for ``caller`` holding ``state``, busy (its first turn runs).

        Raises:
            SessionLimitError: ``max_sessions`` are open.
        """
        self.expire(now)
        if len(self._sessions) >= self.limits.max_sessions:
            raise SessionLimitError(
                f"this peer holds {len(self._sessions)} sessions of the model, its limit; "
                "retry later, or call another provider"
            )
        session = Session(secrets.token_hex(16), caller, state, now, busy=True)
        self._sessions[session.session_id] = session
        return session

    def take(self, session_id: str, caller: str, now: float) -> Session:
        """``caller``'s session ``session_id``, marked busy for a turn.

        Raises:
            UnknownSessionError: no such session for this caller (expired, closed,
                never opened, or another caller's).
            InvalidInputError: a turn is already running on it.
        """
        self.expire(now)
        session = self._sessions.get(session_id)
        if session is None or session.caller != caller:
            raise UnknownSessionError(
                f"no session {session_id[:64]!r} here: it expired after "
                f"{self.limits.idle_timeout:g} s idle, was closed, or never existed; "
                "start a new one"
            )
        if session.busy:
            raise InvalidInputError(f"session {session_id!r} is in the middle of a turn")
        session.busy = True
        return session

    def release(self, session: Session, now: float) -> None:
        """The turn on ``session`` ended; it stays open."""
        session.busy = False
        session.last_used = now

    def close(self, session_id: str, caller: str | None = None) -> bool:
        """Drop a session (``caller``'s only, if given); False if there was none."""
        session = self._sessions.get(session_id)
        if session is None or (caller is not None and session.caller != caller):
            return False
        del self._sessions[session_id]
        return True


class GenerativeModel:
    """A loaded generative model (see the module docstring).

    Args:
        path: the model file (``inspect_generative`` reads what it says of itself).
        max_concurrency: decoding steps running at once (each uses ``threads`` threads).
            The defaults, 2 steps of one thread each, were the fastest measured on two
            cores, for one generation and for eight at once (docs/benchmarks.md,
            "Generation"); onnxruntime's own choice of threads was slower and varied
            with the machine's load.
        max_queue: steps waiting for a turn beyond those; more are refused as busy.
        max_generations: generations running at once; one more is refused as busy.
        threads: onnxruntime threads per step (0: onnxruntime chooses).
        sessions: where sessions are kept; None: a store with default limits.
        metadata: the file's ONNX metadata, if already read.

    Raises:
        ModelFileError: not a generative model file, or one onnxruntime cannot load.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_concurrency: int = 2,
        max_queue: int = 64,
        max_generations: int = 32,
        threads: int = 1,
        sessions: SessionStore | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        path = Path(path)
        found = inspect_generative(path, metadata)
        self.facts = found.facts
        self.prompt = found.prompt
        self.tokenizer_digest = found.tokenizer_digest
        try:
            self._tokenizer = Tokenizer.from_str(found.tokenizer_json)
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise ModelFileError(f"{path}: {TOKENIZER_KEY} is not a tokenizer: {exc}") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelFileError(f"onnxruntime cannot load {path}: {exc}") from None
        self._check_graph(path)
        self.info = found.info
        self.sessions = sessions if sessions is not None else SessionStore()
        self._slots = RunSlots(max_concurrency, max_queue)
        self._max_generations = max_generations
        self._generations = 0
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._empty = np.zeros((1, self.facts.num_kv_heads, 0, self.facts.head_dim), np.float32)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> GenerativeModel:
        return cls(path, **kwargs)

    @property
    def model_id(self) -> str:
        return self.info.model_id

    @property
    def max_session_tokens(self) -> int:
        """Tokens one session may hold: the context, or the session memory limit."""
        by_memory = self.sessions.limits.max_session_bytes // self.facts.kv_bytes_per_token
        return min(self.facts.context_length, by_memory)

    def _check_graph(self, path: Path) -> None:
        facts = self.facts
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        wanted_in = {facts.input_ids, facts.attention_mask} | {
            name for pair in facts.past_names() for name in pair
        }
        wanted_out = {facts.logits} | {name for pair in facts.present_names() for name in pair}
        missing = sorted((wanted_in - inputs) | (wanted_out - outputs))
        if missing:
            raise ModelFileError(
                f"{path}: the graph lacks {len(missing)} tensors its {GENERATION_KEY} names, "
                f"such as {missing[0]!r}"
            )
        extra = sorted(inputs - wanted_in)
        if extra:
            raise ModelFileError(f"{path}: graph input {extra[0]!r} is not one a decoder feeds")

    # --- tokens ---------------------------------------------------------------------------

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        """``text`` as token IDs; ``special`` False: special tokens written in the text are
        plain text (a message cannot forge a turn)."""
        if special:
            ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
            return ids
        self._tokenizer.encode_special_tokens = True
        try:
            ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        finally:
            self._tokenizer.encode_special_tokens = False
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        text: str = self._tokenizer.decode(tokens, skip_special_tokens=True)
        return text

    def prompt_tokens(self, prompt: Prompt, *, first: bool) -> list[int]:
        """The token IDs ``prompt`` adds (``first``: it opens the conversation).

        Raises:
            InvalidInputError: fields for a model without its own prompt (or the
                wrong fields), or token IDs outside the vocabulary.
        """
        if prompt.tokens is not None:
            bad = [t for t in prompt.tokens if not 0 <= t < self.facts.vocab_size]
            if bad:
                raise InvalidInputError(
                    f"token ID {bad[0]} is outside the vocabulary (0..{self.facts.vocab_size - 1})"
                )
            return list(prompt.tokens)
        if prompt.text is not None:
            return self.encode(prompt.text)
        if prompt.fields is not None:
            if self.prompt is None:
                raise InvalidInputError(
                    "this model has no prompt of its own: send messages, text or tokens"
                )
            messages = self.prompt.messages(prompt.fields)
        else:
            messages = list(prompt.messages or ())
        ids: list[int] = []
        for text, trusted in self.facts.chat.pieces(messages, first=first):
            ids += self.encode(text, special=trusted)
        return ids

    # --- decoding -------------------------------------------------------------------------

    def _turn_start(self, state: KvState) -> list[int]:
        """What a session's next turn feeds first: the last reply's tokens the model has
        not seen, and the end of that reply's turn (``<|im_end|>\n``; an end token the
        reply ended with is that text's start)."""
        if not state.length and not state.pending:
            return []
        end = self.facts.chat.reply_end
        if state.pending and state.pending[-1] in self.facts.eos_token_ids:
            eos_text = self._tokenizer.id_to_token(state.pending[-1]) or ""
            if end.startswith(eos_text):
                end = end[len(eos_text) :]
        return state.pending + (self.encode(end) if end else [])

    def _new_state(self) -> KvState:
        return KvState([(self._empty, self._empty) for _ in range(self.facts.num_layers)])

    def _step(self, job: tuple[KvState, list[int]]) -> npt.NDArray[np.float32]:
        """Feed ``tokens`` to the model after ``state``'s cache (in a worker thread);
        return the logits of the last one; ``state`` then holds them."""
        state, tokens = job
        facts = self.facts
        feeds: dict[str, npt.NDArray[Any]] = {
            facts.input_ids: np.asarray([tokens], dtype=np.int64),
            facts.attention_mask: np.ones((1, state.length + len(tokens)), dtype=np.int64),
        }
        for (key_name, value_name), (key, value) in zip(
            facts.past_names(), state.past, strict=True
        ):
            feeds[key_name] = key
            feeds[value_name] = value
        try:
            outputs = dict(zip(self._output_names, self._session.run(None, feeds), strict=True))
        except Exception as exc:  # onnxruntime's errors have no common base we can import
            message = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            raise ModelExecutionError(f"model {self.info.name} failed: {message}") from None
        state.past = [(outputs[k], outputs[v]) for k, v in facts.present_names()]
        state.tokens += tokens
        logits: npt.NDArray[np.float32] = outputs[facts.logits][0, -1]
        return logits

    async def generate(
        self,
        prompt: Prompt,
        params: GenerationParams,
        emit: Emit,
        *,
        caller: str = "",
        session: str | None = None,
        keep: bool = False,
        cancelled: Callable[[], bool] = lambda: False,
        timeout: float = math.inf,
    ) -> GenerationSummary:
        """Continue ``prompt``, calling ``emit`` with each piece of the reply, and say
        how it ended.

        ``session``: continue that session of ``caller`` (its cache already holds the
        conversation; ``prompt`` is the new turns only). ``keep``: keep the cache after
        this turn in a new session (its ID is in the summary). ``cancelled`` is asked
        before each step; once true the generation ends, finish "cancelled".

        Raises:
            InvalidInputError: an empty prompt, or one longer than the context.
            UnknownSessionError, SessionLimitError: see SessionStore; also a turn
                that would take the session over its memory limit.
            PeerBusyError: ``max_generations`` are running.
            DeadlineExceededError: ``timeout`` passed (the session, if any, is closed:
                its cache is in an unknown state).
            ModelExecutionError: onnxruntime failed.
        """
        if self._generations >= self._max_generations:
            raise PeerBusyError(
                f"model {self.info.name} runs {self._generations} generations, its limit"
            )
        now = trio.current_time()
        store = self.sessions
        open_session = store.take(session, caller, now) if session is not None else None
        state = open_session.state if open_session is not None else self._new_state()
        try:
            new = self._turn_start(state)
            new += self.prompt_tokens(prompt, first=state.length == 0)
            cached = state.length
            limit = self.max_session_tokens if (open_session or keep) else self.facts.context_length
            if not new:
                raise InvalidInputError("the prompt is empty")
            if cached + len(new) >= limit:
                message = (
                    f"the conversation would hold {cached + len(new)} tokens; "
                    f"the limit is {limit - 1}"
                )
                if open_session is not None or keep:
                    raise SessionLimitError(f"{message} per session: start a new session")
                raise InvalidInputError(f"{message} (the model's context)")
            if open_session is None and keep:
                open_session = store.open(caller, state, now)
            self._generations += 1
            try:
                summary = await self._decode(
                    state, new, cached, params, emit, cancelled, limit, timeout
                )
            finally:
                self._generations -= 1
        except BaseException:
            if open_session is not None:
                store.close(open_session.session_id)
            raise
        if open_session is not None:
            store.release(open_session, trio.current_time())
            return GenerationSummary(
                summary.finish,
                summary.prompt_tokens,
                summary.completion_tokens,
                summary.cached_tokens,
                open_session.session_id,
            )
        return summary

    async def _decode(
        self,
        state: KvState,
        new: list[int],
        cached: int,
        params: GenerationParams,
        emit: Emit,
        cancelled: Callable[[], bool],
        limit: int,
        timeout: float,
    ) -> GenerationSummary:
        state.pending = []
        deadline = trio.current_time() + timeout
        stream = TextStream(self.decode, params.stop)
        rng = params.rng()
        eos = set(self.facts.eos_token_ids)
        produced = 0
        finish = "length"
        logits = await self._run_step(state, new, deadline)
        while True:
            if cancelled():
                finish = "cancelled"
                break
            token = choose_token(logits, params, rng)
            if token in eos:
                state.pending = [token]
                finish = "eos"
                break
            produced += 1
            text = stream.push(token)
            await emit(text, [token])
            if stream.stopped:
                state.pending = [token]
                finish = "stop"
                break
            if produced >= params.max_tokens:
                state.pending = [token]
                break
            if state.length + 1 >= limit:
                state.pending = [token]
                finish = "context"
                break
            logits = await self._run_step(state, [token], deadline)
        rest = stream.finish()
        if rest:
            await emit(rest, [])
        return GenerationSummary(finish, len(new), produced, cached)  # type: ignore[arg-type]

    async def _run_step(
        self, state: KvState, tokens: list[int], deadline: float
    ) -> npt.NDArray[np.float32]:
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            raise DeadlineExceededError(f"model {self.info.name}: the generation's time ran out")
        return await self._slots.run(
            self._step,
            (state, tokens),
            timeout=remaining,
            name=self.info.name,
            model_id=self.model_id,
        )

    # --- the tensor view (ServedModel) ----------------------------------------------------

    async def run(
        self, inputs: Mapping[str, Any], *, timeout: float = math.inf
    ) -> dict[str, npt.NDArray[Any]]:
        """Greedy replies, one per row: ``prompt`` rows as user messages, or the model's
        own prompt filled from its inputs.

        Raises:
            As ``generate``; InvalidInputError for inputs that do not fit the schema.
        """
        checked = check_inputs(self.info.schema, inputs)
        deadline = trio.current_time() + timeout
        rows = len(next(iter(checked.values())))
        template = self.prompt
        max_tokens = template.max_tokens if template is not None else TENSOR_VIEW_MAX_TOKENS
        params = GenerationParams(max_tokens=max_tokens)
        replies: list[str] = []
        for row in range(rows):
            if template is None:
                prompt = Prompt(messages=(("user", str(checked["prompt"][row])),))
            else:
                prompt = Prompt(fields={name: str(checked[name][row]) for name in template.inputs})
            pieces: list[str] = []
            await self.generate(
                prompt, params, _collector(pieces), timeout=deadline - trio.current_time()
            )
            replies.append("".join(pieces))
        output = self.info.schema.outputs[0].name
        return {output: np.array(replies, dtype=object)}

    @property
    def slots(self) -> RunSlots:
        """Where its decoding steps wait and run (their number now: ``running``,
        ``waiting``)."""
        return self._slots

    async def wait_idle(self, timeout: float) -> bool:
        return await self._slots.wait_idle(timeout)


def _collector(pieces: list[str]) -> Emit:
    """An ``Emit`` that appends each piece's text to ``pieces``."""

    async def collect(text: str, tokens: list[int]) -> None:
        pieces.append(text)

    return collect
