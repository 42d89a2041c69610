"""Text generation with no I/O: what a generative model file says about itself, the
parameters a caller sets, token choice, streamed text with stop strings, chat turns.

    GenerationFacts  the ``p2pnet.generation`` metadata of a decoder model file (its
                     cache layout, context length, end tokens, chat format)
    ChatFormat       how a conversation becomes the text the model continues
    PromptTemplate   the ``p2pnet.prompt`` metadata: named text inputs -> one user turn
    GenerationParams max tokens, sampling (temperature, top-k, top-p, seed), stop strings
    choose_token     the next token from a row of logits: greedy, or sampled
    TextStream       tokens in, text deltas out; holds back what may become a stop string

The runtime (``p2pnet.runtime.generative``) runs the model and feeds these; nothing here
knows onnxruntime or the tokenizer library. Same seed, same logits: same tokens.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from p2pnet.core.text import quote_bounded
from p2pnet.errors import InvalidInputError, ModelFileError

# numpy is imported by the token choice that uses it: the command line takes
# GenerationParams without loading numpy (tests/test_cli_imports.py).
if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DEFAULT_SESSION_LIMITS",
    "FINISH_REASONS",
    "MAX_CHUNK_TOKENS",
    "MAX_GENERATION_TOKENS",
    "MAX_STOP_STRINGS",
    "MAX_STOP_STRING_CHARS",
    "ChatFormat",
    "FinishReason",
    "GenerationCard",
    "GenerationFacts",
    "GenerationParams",
    "PromptTemplate",
    "SessionLimits",
    "TextStream",
    "choose_token",
    "coalesce_pieces",
    "parse_generation_facts",
    "parse_prompt_template",
]

MAX_GENERATION_TOKENS: Final = 4096
# Tokens one Chunk carries at most (its token array is bounded by the reader's
# max_collection_len, 256 by default).
MAX_CHUNK_TOKENS: Final = 256
MAX_STOP_STRINGS: Final = 8
MAX_STOP_STRING_CHARS: Final = 64
MAX_TEMPERATURE: Final = 10.0
# The lowest temperature above 0: below it, dividing the logits by it overflows float64
# (and sampling that cold is greedy in all but name).
MIN_TEMPERATURE: Final = 0.01
MAX_SEED: Final = (1 << 64) - 1
# The metadata JSON of a model file: a tokenizer is separate; the facts are small.
MAX_FACTS_CHARS: Final = 64 << 10
MAX_ROLE_CHARS: Final = 32

FinishReason = Literal["eos", "length", "stop", "cancelled", "context", "closed"]
FINISH_REASONS: Final[tuple[str, ...]] = ("eos", "length", "stop", "cancelled", "context", "closed")
"""Why a generation ended: an end token, ``max_tokens``, a stop string, the caller's
cancel, the model's context full; ``closed``: the reply to closing a session."""

ROLES: Final = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)
class ChatFormat:
    """How a conversation becomes text: each turn is ``turn`` with ``{role}`` and
    ``{content}`` filled in; ``generation_prompt`` opens the model's reply; a
    conversation without a system turn starts with ``default_system`` (if not empty)."""

    turn: str
    generation_prompt: str
    default_system: str = ""

    def __post_init__(self) -> None:
        if self.turn.count("{content}") != 1 or self.turn.count("{role}") != 1:
            raise ValueError("chat turn must hold {role} and {content} once each")

    def render(
        self, messages: Sequence[tuple[str, str]], *, first: bool = True, reply: bool = True
    ) -> str:
        """The text of ``messages`` ((role, content) pairs); ``first``: they open the
        conversation (so a default system turn comes first); ``reply``: end with the
        generation prompt."""
        return "".join(text for text, _ in self.pieces(messages, first=first, reply=reply))

    def pieces(
        self, messages: Sequence[tuple[str, str]], *, first: bool = True, reply: bool = True
    ) -> list[tuple[str, bool]]:
        """``render``'s text in pieces, each marked True when it comes from the format
        (its special tokens are meant) and False when it is a message's content (which
        must be tokenized as plain text, so that a message cannot forge a turn)."""
        turns = list(messages)
        if first and self.default_system and (not turns or turns[0][0] != "system"):
            turns.insert(0, ("system", self.default_system))
        before, after = self.turn.split("{content}")
        out: list[tuple[str, bool]] = []
        for role, content in turns:
            out += [
                (before.replace("{role}", role), True),
                (content, False),
                (after.replace("{role}", role), True),
            ]
        if reply:
            out.append((self.generation_prompt, True))
        return [(text, trusted) for text, trusted in out if text]

    @property
    def reply_end(self) -> str:
        """What follows a reply's content in the conversation (``<|im_end|>\\n``)."""
        return self.turn.split("{content}")[1].replace("{role}", "assistant")


@dataclass(frozen=True, slots=True)
class GenerationFacts:
    """What a generative model file says about itself (``p2pnet.generation``): the names
    and layout of its cache tensors, its limits, its end tokens and chat format."""

    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    chat: ChatFormat
    input_ids: str = "input_ids"
    attention_mask: str = "attention_mask"
    past_key: str = "past_key_values.%d.key"
    past_value: str = "past_key_values.%d.value"
    logits: str = "logits"
    present_key: str = "present.%d.key"
    present_value: str = "present.%d.value"
    bos_token_id: int | None = None
    name: str = ""
    license: str = ""
    source: str = ""

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes the float32 cache holds per token of context."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 4

    def past_names(self) -> list[tuple[str, str]]:
        """(key, value) input names of each layer's cache, in layer order."""
        return [(self.past_key % i, self.past_value % i) for i in range(self.num_layers)]

    def present_names(self) -> list[tuple[str, str]]:
        """(key, value) output names of each layer's updated cache, in layer order."""
        return [(self.present_key % i, self.present_value % i) for i in range(self.num_layers)]


def _get(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ModelFileError(
            f"{where}: {key!r} must be {kind.__name__}, got {quote_bounded(value)}"
        )
    return value


def _positive(obj: Mapping[str, Any], key: str, where: str, limit: int = 1 << 24) -> int:
    value: int = _get(obj, key, int, where)
    if not 0 < value <= limit:
        raise ModelFileError(f"{where}: {key!r} must be in 1..{limit}, got {value}")
    return value


def _layer_name(obj: Mapping[str, Any], key: str, where: str) -> str:
    value: str = _get(obj, key, str, where)
    if value.count("%d") != 1 or value.count("%") != 1:
        raise ModelFileError(f"{where}: {key!r} must hold one %d, got {quote_bounded(value)}")
    return value


def _json_object(text: str, where: str) -> dict[str, Any]:
    """The JSON object in a model file's metadata entry ``where``.

    Raises:
        ModelFileError: over MAX_FACTS_CHARS, not JSON (or nested too deep), or not an
            object.
    """
    if len(text) > MAX_FACTS_CHARS:
        raise ModelFileError(f"{where}: {len(text)} characters, over {MAX_FACTS_CHARS}")
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise ModelFileError(f"{where} is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelFileError(f"{where} must be a JSON object")
    return raw


def parse_generation_facts(text: str, where: str = "p2pnet.generation") -> GenerationFacts:
    """The facts in a model file's ``p2pnet.generation`` metadata (docs/models.md).

    Raises:
        ModelFileError: not JSON, a field missing or of the wrong type or range, or an
            unknown format.
    """
    raw = _json_object(text, where)
    if type(raw.get("format")) is not int or raw["format"] != 1:
        raise ModelFileError(f"{where}: format {quote_bounded(raw.get('format'))} is not 1")
    vocab = _positive(raw, "vocab_size", where)
    eos = _get(raw, "eos_token_ids", list, where)
    if not eos or len(eos) > 16 or not all(type(t) is int and 0 <= t < vocab for t in eos):
        raise ModelFileError(f"{where}: eos_token_ids must be 1..16 token IDs below vocab_size")
    bos = raw.get("bos_token_id")
    if bos is not None and not (type(bos) is int and 0 <= bos < vocab):
        raise ModelFileError(f"{where}: bos_token_id must be a token ID or null")
    inputs = _get(raw, "inputs", dict, where)
    outputs = _get(raw, "outputs", dict, where)
    chat = _get(raw, "chat", dict, where)
    try:
        chat_format = ChatFormat(
            _get(chat, "turn", str, f"{where}.chat"),
            _get(chat, "generation_prompt", str, f"{where}.chat"),
            chat.get("default_system", "") if isinstance(chat.get("default_system"), str) else "",
        )
    except ValueError as exc:
        raise ModelFileError(f"{where}.chat: {exc}") from None
    return GenerationFacts(
        context_length=_positive(raw, "context_length", where),
        vocab_size=vocab,
        eos_token_ids=tuple(eos),
        num_layers=_positive(raw, "num_layers", where, 1024),
        num_kv_heads=_positive(raw, "num_kv_heads", where, 1024),
        head_dim=_positive(raw, "head_dim", where, 4096),
        chat=chat_format,
        input_ids=_get(inputs, "input_ids", str, f"{where}.inputs"),
        attention_mask=_get(inputs, "attention_mask", str, f"{where}.inputs"),
        past_key=_layer_name(inputs, "past_key", f"{where}.inputs"),
        past_value=_layer_name(inputs, "past_value", f"{where}.inputs"),
        logits=_get(outputs, "logits", str, f"{where}.outputs"),
        present_key=_layer_name(outputs, "present_key", f"{where}.outputs"),
        present_value=_layer_name(outputs, "present_value", f"{where}.outputs"),
        bos_token_id=bos,
        name=str(raw.get("name", ""))[:128],
        license=str(raw.get("license", ""))[:64],
        source=str(raw.get("source", ""))[:256],
    )


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """A model's own prompt (``p2pnet.prompt``): named text inputs fill ``user`` (a
    ``str.format`` template) as one user turn after the ``system`` turn; the reply is the
    output ``output``, at most ``max_tokens`` tokens."""

    inputs: tuple[str, ...]
    output: str
    system: str
    user: str
    max_tokens: int

    def messages(self, fields: Mapping[str, str]) -> list[tuple[str, str]]:
        """The conversation for ``fields`` (one text per input name).

        Raises:
            InvalidInputError: a field missing or extra.
        """
        missing = [name for name in self.inputs if name not in fields]
        extra = [name for name in fields if name not in self.inputs]
        if missing or extra:
            raise InvalidInputError(
                f"the model's prompt takes {', '.join(self.inputs)}; "
                + (
                    f"missing {missing[0]!r}"
                    if missing
                    else f"unexpected {quote_bounded(extra[0])}"
                )
            )
        user = self.user.format_map({name: fields[name] for name in self.inputs})
        turns = [("system", self.system)] if self.system else []
        return [*turns, ("user", user)]


def parse_prompt_template(text: str, where: str = "p2pnet.prompt") -> PromptTemplate:
    """The prompt in a model file's ``p2pnet.prompt`` metadata (docs/models.md).

    Raises:
        ModelFileError: not JSON, a field missing or wrong, or a template that names
            anything but its inputs.
    """
    raw = _json_object(text, where)
    names = _get(raw, "inputs", list, where)
    if not names or not all(isinstance(n, str) and n.isidentifier() for n in names):
        raise ModelFileError(f"{where}: inputs must be names")
    try:
        named = _template_fields(_get(raw, "user", str, where))
    except ValueError as exc:
        raise ModelFileError(f"{where}: the user template is malformed: {exc}") from None
    unknown = [name for name in named if name not in names]
    if unknown:
        # An attribute or an index ({text.upper}, {text[0]}) is not an input either.
        raise ModelFileError(
            f"{where}: the user template names {quote_bounded(unknown[0])}, not an input"
        )
    template = PromptTemplate(
        tuple(names),
        _get(raw, "output", str, where),
        raw.get("system", "") if isinstance(raw.get("system"), str) else "",
        _get(raw, "user", str, where),
        _positive(raw, "max_tokens", where, MAX_GENERATION_TOKENS),
    )
    try:
        template.messages({name: "" for name in names})
    except (ValueError, TypeError) as exc:  # a format spec or conversion str refuses
        raise ModelFileError(f"{where}: the user template is malformed: {exc}") from None
    return template


def _template_fields(template: str) -> list[str]:
    """The replacement fields of a ``str.format`` template.

    Raises:
        ValueError: unbalanced braces, or a field inside a format spec (an input's text
            would then be a format spec).
    """
    out: list[str] = []
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is not None:
            out.append(name)
        if spec and "{" in spec:
            raise ValueError(f"a field inside the format spec {quote_bounded(spec)}")
    return out


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """What a caller sets for one generation.

    ``temperature`` 0 is greedy (the most likely token every time; ``top_k``, ``top_p``
    and ``seed`` then change nothing); above 0, tokens are sampled from the logits divided
    by it, kept to the ``top_k`` most likely (0: all) and to the fewest whose probability
    adds up to ``top_p``. ``seed`` fixes the sampling: same seed, same tokens. Generation
    stops after ``max_tokens`` tokens, at an end token, or before the first of ``stop``
    that appears in the text (the stop string is not part of the reply).

    Raises:
        InvalidInputError: a value out of range (the message names it).
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if type(self.max_tokens) is not int or not 1 <= self.max_tokens <= MAX_GENERATION_TOKENS:
            raise InvalidInputError(
                f"max_tokens must be in 1..{MAX_GENERATION_TOKENS}, got "
                f"{quote_bounded(self.max_tokens)}"
            )
        for name, value, low, high in (
            ("temperature", self.temperature, 0.0, MAX_TEMPERATURE),
            ("top_p", self.top_p, 0.0, 1.0),
        ):
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not low <= value <= high
                or (name == "top_p" and value == 0)
            ):
                raise InvalidInputError(
                    f"{name} must be in {'(0' if name == 'top_p' else f'[{low:g}'}, {high:g}], "
                    f"got {quote_bounded(value)}"
                )
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise InvalidInputError(
                f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got "
                f"{quote_bounded(self.temperature)}"
            )
        if type(self.top_k) is not int or not 0 <= self.top_k <= 1 << 20:
            raise InvalidInputError(
                f"top_k must be in 0..{1 << 20}, got {quote_bounded(self.top_k)}"
            )
        if type(self.seed) is not int or not 0 <= self.seed <= MAX_SEED:
            raise InvalidInputError(f"seed must be in 0..2**64-1, got {quote_bounded(self.seed)}")
        if isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.stop, tuple):
            raise InvalidInputError(
                f"stop must be a sequence of strings, got {type(self.stop).__name__}"
            )
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidInputError(
                f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}"
            )
        for stop in self.stop:
            if not isinstance(stop, str) or not 1 <= len(stop) <= MAX_STOP_STRING_CHARS:
                raise InvalidInputError(
                    f"a stop string must be 1..{MAX_STOP_STRING_CHARS} characters, got "
                    f"{quote_bounded(stop)}"
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def rng(self) -> np.random.Generator:
        """The random source of one generation: a fresh generator seeded with ``seed``."""
        import numpy as np

        return np.random.Generator(np.random.PCG64(self.seed))


def choose_token(
    logits: npt.NDArray[Any], params: GenerationParams, rng: np.random.Generator
) -> int:
    """The next token from one row of ``logits`` (the vocabulary's scores).

    Greedy: the highest score (the lowest ID among equals). Sampled: temperature, then
    top-k, then top-p, then one uniform draw from ``rng`` against the cumulative
    probabilities in descending order (ties: lower ID first), so the choice depends on
    the logits, the parameters and the draw alone.
    """
    import numpy as np

    if params.greedy:
        return int(np.argmax(logits))
    scores = np.asarray(logits, dtype=np.float64) / params.temperature
    order = np.argsort(-scores, kind="stable")
    if params.top_k:
        order = order[: params.top_k]
    ranked = scores[order]
    probs = np.exp(ranked - ranked[0])
    probs /= probs.sum()
    if params.top_p < 1.0:
        cumulative = np.cumsum(probs)
        keep = int(np.searchsorted(cumulative, params.top_p, side="left")) + 1
        order, probs = order[:keep], probs[:keep] / cumulative[min(keep, len(probs)) - 1]
    draw = rng.random()
    index = int(np.searchsorted(np.cumsum(probs), draw, side="right"))
    return int(order[min(index, len(order) - 1)])


class TextStream:
    """Token IDs in, text out, as it becomes final.

    ``push(token)`` returns the text that token adds, which may be "" while the text ends
    in an incomplete character (a byte-level token cut a UTF-8 sequence) or in what may
    be the start of a stop string. Once a stop string appears, ``stopped`` is true and the
    text ends before it. ``finish()`` gives back what was held. The text returned,
    concatenated, is always a prefix of the decoded reply.

    Args:
        decode: the tokenizer's decoding of a whole token sequence (special tokens
            dropped); called with every token so far, so that characters spanning
            tokens come out whole.
        stop: stop strings.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self.tokens: list[int] = []
        self.emitted = ""
        self.stopped = False
        self._text = ""

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.tokens.append(token)
        self._text = self._decode(self.tokens)
        cut = self._first_stop(self._text)
        if cut is not None:
            self.stopped = True
            self._text = self._text[:cut]
            return self._emit(self._text)
        ready = self._text
        if ready.endswith("\ufffd"):  # an incomplete character: wait for its other bytes
            ready = ready.rstrip("\ufffd")
        return self._emit(ready[: len(ready) - self._held_back(ready)])

    def finish(self) -> str:
        """The rest of the text, once no token follows."""
        return self._emit(self._text)

    @property
    def text(self) -> str:
        """The reply so far, stop string cut off (held-back text included)."""
        return self._text

    def _emit(self, ready: str) -> str:
        if len(ready) <= len(self.emitted) or not ready.startswith(self.emitted):
            return ""
        delta = ready[len(self.emitted) :]
        self.emitted = ready
        return delta

    def _first_stop(self, text: str) -> int | None:
        # Search from just before what was emitted: a stop string is never inside it.
        start = max(0, len(self.emitted) - MAX_STOP_STRING_CHARS)
        found = [i for s in self._stop if (i := text.find(s, start)) >= 0]
        return min(found) if found else None

    def _held_back(self, text: str) -> int:
        """Characters at the end of ``text`` that may begin a stop string."""
        longest = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest


def coalesce_pieces(
    pieces: Sequence[tuple[str, Sequence[int]]], max_tokens: int = MAX_CHUNK_TOKENS
) -> list[tuple[str, tuple[int, ...]]]:
    """Consecutive pieces of a reply (text, tokens; each of at most ``max_tokens``
    tokens, as a decoding step's one) joined into as few as possible of at most
    ``max_tokens`` tokens each: the same text and tokens, in the same order."""
    out: list[tuple[str, tuple[int, ...]]] = []
    text, tokens = "", list[int]()
    for piece_text, piece_tokens in pieces:
        if tokens and len(tokens) + len(piece_tokens) > max_tokens:
            out.append((text, tuple(tokens)))
            text, tokens = "", []
        text += piece_text
        tokens += piece_tokens
    if text or tokens:
        out.append((text, tuple(tokens)))
    return out


def check_role(role: object) -> str:
    """A chat message's role, checked.

    Raises:
        InvalidInputError: not system, user or assistant.
    """
    if role not in ROLES:
        raise InvalidInputError(
            f"a message's role must be one of {', '.join(ROLES)}, got {quote_bounded(role)}"
        )
    return str(role)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """What one peer keeps for generation sessions, per generative model it serves.

    max_sessions: sessions open at once; one more is refused (SessionLimitError).
    max_session_bytes: cache memory of one session (float32 keys and values of every
        token it holds); a turn that would go over it is refused.
    idle_timeout: seconds a session is kept after its last turn; then it is dropped
        and its ID is unknown (UnknownSessionError).
    """

    max_sessions: int = 16
    max_session_bytes: int = 64 << 20
    idle_timeout: float = 300.0

    def __post_init__(self) -> None:
        if type(self.max_sessions) is not int or self.max_sessions < 0:
            raise ValueError("max_sessions must be a whole number >= 0")
        if type(self.max_session_bytes) is not int or self.max_session_bytes < 0:
            raise ValueError("max_session_bytes must be a whole number >= 0")
        if not isinstance(self.idle_timeout, int | float) or not 0 < self.idle_timeout < 1e9:
            raise ValueError("idle_timeout must be a positive number of seconds")


DEFAULT_SESSION_LIMITS: Final = SessionLimits()


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a generation continues; exactly one of:

    ``messages``: (role, content) turns, rendered with the model's chat format and
        ending with its generation prompt (a session's later turns: the new turns only);
    ``text``: text tokenized as it is (the caller writes the whole prompt, format and
        all);
    ``tokens``: token IDs as they are;
    ``fields``: named texts for a model with its own prompt (``PromptTemplate``).

    Raises:
        InvalidInputError: not exactly one given, or a role that is not system, user or
            assistant.
    """

    messages: tuple[tuple[str, str], ...] | None = None
    text: str | None = None
    tokens: tuple[int, ...] | None = None
    fields: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        given = [
            name
            for name in ("messages", "text", "tokens", "fields")
            if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise InvalidInputError(
                "a prompt is exactly one of messages, text, tokens or fields; got "
                + (", ".join(given) or "none")
            )
        for role, _ in self.messages or ():
            check_role(role)

    @property
    def kind(self) -> str:
        return next(
            name
            for name in ("messages", "text", "tokens", "fields")
            if getattr(self, name) is not None
        )


@dataclass(frozen=True, slots=True)
class GenerationSummary:
    """How a generation ended: why, how many tokens the prompt had (``cached_tokens`` of
    them were already in the session's cache and not computed again), how many it
    produced, and the session that keeps its cache, if any."""

    finish: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    session: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationCard:
    """What a capability record says of a generative model (its ``gen`` field): the
    context length, the end tokens, the chat turn format and the generation prompt, and
    the SHA-256 of the tokenizer the model file carries (``sha256:<hex>``).

    Raises:
        ValueError: a field out of its bound (the message names it).
    """

    context_length: int
    eos_token_ids: tuple[int, ...]
    chat_turn: str
    generation_prompt: str
    tokenizer: str

    def __post_init__(self) -> None:
        if type(self.context_length) is not int or not 0 < self.context_length <= 1 << 24:
            raise ValueError(f"gen context must be in 1..{1 << 24}")
        if (
            not isinstance(self.eos_token_ids, tuple)
            or not 1 <= len(self.eos_token_ids) <= 16
            or not all(type(t) is int and 0 <= t < 1 << 32 for t in self.eos_token_ids)
        ):
            raise ValueError("gen eos must be 1..16 token IDs")
        for name, text in (("turn", self.chat_turn), ("reply", self.generation_prompt)):
            if not isinstance(text, str) or len(text.encode()) > 256:
                raise ValueError(f"gen {name} must be text of at most 256 bytes")
        if self.chat_turn.count("{content}") != 1:
            raise ValueError("gen turn must hold {content} once")
        if (
            not isinstance(self.tokenizer, str)
            or not self.tokenizer.startswith("sha256:")
            or len(self.tokenizer) != 71
            or any(c not in "0123456789abcdef" for c in self.tokenizer[7:])
        ):
            raise ValueError("gen tokenizer must be sha256:<64 lower-case hex digits>")
