"""What several commands share: ``Command``, which binds a command's typed options to
its code; the parent parsers of the options many commands take, with their typed forms
(``SwarmOptions``, ``DiscoveryOptions``); and the identity those options name."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, TypeAlias, TypeVar

from rich.text import Text

from p2pnet.cli.render import err
from p2pnet.config import (
    SwarmJoin,
    config_path,
    default_identity_path,
    resolve_swarm,
)
from p2pnet.core.generation import (
    MAX_GENERATION_TOKENS,
    MAX_STOP_STRINGS,
    MAX_TEMPERATURE,
    GenerationParams,
)
from p2pnet.core.pricing import Price
from p2pnet.errors import InvalidInputError, UsageError

# What starts a peer of the command's own (py-libp2p, the DHT, accounting, the ledger)
# is imported where it is used: parsing the command line, and a command that goes
# through the running peer's API, load none of it (tests/test_cli_imports.py).
if TYPE_CHECKING:
    from p2pnet.accounting import AccountingConfig
    from p2pnet.dht.node import DhtConfig
    from p2pnet.gateway.client import ApiClient, BlockingApiClient
    from p2pnet.gateway.settings import RunningApi
    from p2pnet.net.identity import Identity
    from p2pnet.peer import Peer
    from p2pnet.sqlite_file import FileKind
    from p2pnet.status import PeerStatus

__all__ = [
    "DEFAULT_LISTEN",
    "Command",
    "DiscoveryOptions",
    "ParentParsers",
    "Subparsers",
    "SwarmOptions",
    "add_input_option",
    "generation_params",
    "identity_path",
    "load_identity",
    "parent_parsers",
    "running_peer_api",
    "running_peer_client",
]

log = logging.getLogger(__name__)

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# Where peers started from the command line listen unless told otherwise: loopback only.
DEFAULT_LISTEN: Final = ("/ip4/127.0.0.1/tcp/0",)

OptionsT = TypeVar("OptionsT")


@dataclass(frozen=True, slots=True)
class Command(Generic[OptionsT]):
    """A command as its parser's ``handler`` default: ``options`` turns the parsed
    arguments into the command's frozen, typed options once, and ``run`` takes those and
    returns the exit status. ``options`` raises UsageError for values the parser cannot
    check; ``main`` reports those as the parser reports its own (usage line, exit 2)."""

    options: Callable[[argparse.Namespace], OptionsT]
    run: Callable[[OptionsT], int]


@dataclass(frozen=True, slots=True)
class ParentParsers:
    """The options several commands take, as parent parsers.

    common: ``-v`` and ``--identity``, on every command.
    swarm: ``--swarm`` and ``--swarm-key``, on commands that join a swarm.
    finding: the swarm's and ``--task``, ``--model``, ``--bootstrap``, ``--timeout``,
        ``--json``, on commands that find models in a swarm.
    discovery: finding's and ``--max-price``, on those that choose among providers by
        price too (call, find, pipeline run).
    generation: ``--max-tokens``, ``--temperature``, ``--top-p``, ``--top-k``,
        ``--seed``, ``--stop``, on commands that generate text (chat, call).
    """

    common: argparse.ArgumentParser
    swarm: argparse.ArgumentParser
    finding: argparse.ArgumentParser
    discovery: argparse.ArgumentParser
    generation: argparse.ArgumentParser


def parent_parsers() -> ParentParsers:
    """The common, swarm, finding, discovery and generation parent parsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output (-vv adds py-libp2p warnings, -vvv everything)",
    )
    common.add_argument(
        "--identity", metavar="FILE", help=f"peer key file (default {default_identity_path()})"
    )
    swarm = argparse.ArgumentParser(add_help=False)
    swarm.add_argument(
        "--swarm",
        metavar="NAME",
        help=f"join the swarm [swarms.NAME] of {config_path()}: its bootstrap peers and "
        "swarm key (default: none, nothing is dialled that is not named)",
    )
    swarm.add_argument(
        "--swarm-key",
        metavar="FILE",
        help="a private network's key file (p2pnet swarm-key new): only peers with the same "
        "key connect; TCP only",
    )
    finding = argparse.ArgumentParser(add_help=False, parents=[swarm])
    finding.add_argument("--task", metavar="TAG", help="find the model by task")
    finding.add_argument("--model", metavar="MODEL_ID", help="find the model by its ID")
    finding.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="a peer of the swarm to ask (repeatable)",
    )
    finding.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up after this long (default 30)",
    )
    finding.add_argument(
        "--listen", action="append", default=None, metavar="MULTIADDR", help=argparse.SUPPRESS
    )
    finding.add_argument("--json", action="store_true", help="machine-readable output")
    finding.add_argument(
        "--standalone",
        action="store_true",
        help="start a peer of this command's own even when a peer of this identity is "
        "running (default: use the running peer's local API; docs/cli.md)",
    )
    discovery = argparse.ArgumentParser(add_help=False, parents=[finding])
    discovery.add_argument(
        "--max-price",
        metavar="CALL,MB,CPU_S",
        help="only providers whose price is at most this in every part, in micro-units: "
        "per call, per MB moved, per CPU second (e.g. 2000,20000,0; default: any price)",
    )
    return ParentParsers(common, swarm, finding, discovery, generation_parser())


def generation_parser() -> argparse.ArgumentParser:
    """The generation parent parser: GenerationParams as options (``generation_params``
    reads them)."""
    defaults = GenerationParams()
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("generation")
    group.add_argument(
        "--max-tokens",
        type=int,
        default=defaults.max_tokens,
        metavar="N",
        help=f"end a reply after N tokens (default {defaults.max_tokens}, "
        f"at most {MAX_GENERATION_TOKENS})",
    )
    group.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        metavar="T",
        help=f"0 (default): the most likely token every time; above 0 (at most "
        f"{MAX_TEMPERATURE:g}): tokens are sampled, the more varied the higher T",
    )
    group.add_argument(
        "--top-p",
        type=float,
        default=defaults.top_p,
        metavar="P",
        help="sample from the fewest most likely tokens whose probabilities add up to P "
        "(default 1: all)",
    )
    group.add_argument(
        "--top-k",
        type=int,
        default=defaults.top_k,
        metavar="K",
        help="sample from the K most likely tokens (default 0: all)",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        metavar="S",
        help="the sampling's seed: the same seed, the same reply (default 0)",
    )
    group.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help=f"end the reply before this text (repeatable, up to {MAX_STOP_STRINGS})",
    )
    return parser


# GenerationParams' field names, as the options that set them.
_GENERATION_FLAGS: Final = {
    "max_tokens": "--max-tokens",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "top_k": "--top-k",
    "seed": "--seed",
}


def generation_params(args: argparse.Namespace) -> GenerationParams:
    """The generation options of ``args`` (``generation_parser``) as GenerationParams.

    Raises:
        UsageError: a value out of range; the message names the option.
    """
    try:
        return GenerationParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            stop=tuple(args.stop),
        )
    except InvalidInputError as exc:
        field, _, rest = exc.message.partition(" ")
        if field in _GENERATION_FLAGS:
            raise UsageError(f"{_GENERATION_FLAGS[field]} {rest}") from None
        raise UsageError(f"--stop: {exc.message}") from None


def add_input_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--input``/``-i NAME=VALUE`` (repeatable): the tensors of ``call`` and ``pipeline
    run``, in the forms p2pnet.inputs.parse_input reads."""
    parser.add_argument(
        "--input", "-i", action="append", default=[], metavar="NAME=VALUE", help=help_text
    )


async def finish_checks(peer: Peer) -> None:
    """Let the spot checks of ``peer``'s calls end (each within its timeout) before a
    one-shot command stops the peer: a check starts after its call returned."""
    checker = peer.spot_checker
    if checker is not None:
        await checker.wait_idle()


def accounting_config() -> AccountingConfig:
    """How this user's peers keep accounts: ``[credit]`` of config.toml, or the defaults.

    Raises:
        ConfigError: a ``[credit]`` table that is wrong (the message says where).
    """
    from p2pnet.accounting import AccountingConfig
    from p2pnet.config import load_credit

    credit = load_credit()
    return AccountingConfig(
        credit=credit.policy,
        ack_every_calls=credit.ack_every_calls,
        ack_every_units=credit.ack_every_units,
    )


def dht_config() -> DhtConfig:
    """The DHT of this user's peers: its defences as ``[dht]`` of config.toml says
    (IP-group limits, disjoint lookup paths), the rest the defaults.

    Raises:
        ConfigError: a ``[dht]`` table that is wrong (the message says where).
    """
    from p2pnet.config import load_dht
    from p2pnet.dht.node import DhtConfig, DhtDefences

    settings = load_dht()
    return DhtConfig(defences=DhtDefences(diversity=settings.diversity, paths=settings.paths))


def parse_price(text: str, option: str = "--price") -> Price:
    """``CALL[,MB[,CPU_S]]`` in whole micro-units (missing parts are 0) as a Price.

    Raises:
        UsageError: not one to three whole numbers, or one out of range.
    """
    parts = [p.strip() for p in text.split(",")]
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise UsageError(
            f"{option} {text!r:.40}: expected CALL[,MB[,CPU_S]] in whole micro-units, "
            "e.g. 1000,10000,1000000"
        )
    try:
        return Price(*(int(p) for p in parts))
    except ValueError as exc:
        raise UsageError(f"{option} {text!r:.40}: {exc}") from None


def identity_path(args: argparse.Namespace) -> Path | None:
    """``--identity FILE``, or None for the default identity."""
    return Path(args.identity) if args.identity else None


@dataclass(frozen=True, slots=True)
class PeerFile:
    """A file p2pnet keeps per identity (a ledger, a trust store): ``--<option> FILE`` as
    given, else the file of ``--identity`` (or of the default identity)."""

    given: Path | None
    identity: Path | None
    kind: FileKind
    option: str
    default_of: Callable[[str], Path]

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        dest: str,
        kind: FileKind,
        default_of: Callable[[str], Path],
    ) -> PeerFile:
        """``--{dest}`` and ``--identity`` of ``args``; ``default_of(peer_id)``: the
        identity's file."""
        given = getattr(args, dest, None)
        return cls(
            Path(given) if given else None, identity_path(args), kind, f"--{dest}", default_of
        )

    def path(self) -> Path:
        """The file (which may not exist yet).

        Raises:
            kind.error: no ``--<option>`` and no identity to find the file by.
            ConfigError: the identity file cannot be used.
        """
        if self.given is not None:
            return self.given
        from p2pnet.net.identity import load_identity, peer_id_of

        key = self.identity or default_identity_path()
        if not key.exists():
            raise self.kind.error(
                f"no identity at {key}, so no {self.kind.noun} of it: give {self.option} FILE "
                "or --identity FILE"
            )
        return self.default_of(peer_id_of(load_identity(key)))

    def existing(self, nothing: str) -> Path | None:
        """The file if it exists; else None, said on stderr with ``nothing`` (what its
        absence means)."""
        path = self.path()
        if path.exists():
            return path
        err.print(Text(f"no {self.kind.noun} yet at {path}: {nothing}"))
        return None


def load_identity(path: Path | None) -> tuple[Identity, Path, bool]:
    """The identity in ``path`` (None: the default one), created if there is none yet:
    (identity, its key file, whether it was created now).

    Raises:
        ConfigError: the key file cannot be read, used or created.
    """
    from p2pnet.net.identity import load_or_create_identity

    path = path or default_identity_path()
    identity, created = load_or_create_identity(path)
    if created:
        log.info("created a new peer identity at %s", path)
    return identity, path, created


@dataclass(frozen=True, slots=True)
class SwarmOptions:
    """``--swarm NAME``, ``--swarm-key FILE`` and ``--bootstrap MULTIADDR...``."""

    name: str | None
    swarm_key: Path | None
    bootstrap: tuple[str, ...]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SwarmOptions:
        swarm_key = Path(args.swarm_key) if args.swarm_key is not None else None
        return cls(args.swarm, swarm_key, tuple(args.bootstrap))

    def resolve(self) -> SwarmJoin:
        """The bootstrap peers and key file to join with: those given, and the named
        swarm's (config.resolve_swarm).

        Raises:
            ConfigError: no such swarm, or a bad config file.
        """
        return resolve_swarm(self.name, bootstrap=self.bootstrap, swarm_key=self.swarm_key)


@dataclass(frozen=True, slots=True)
class DiscoveryOptions:
    """The options of the commands that find models in a swarm: the finding or discovery
    parent parser's (``max_price`` None without the latter), and ``--identity`` and
    ``-v`` (``verbose``: how many)."""

    identity: Path | None
    swarm: SwarmOptions
    task: str | None
    model: str | None
    timeout: float
    listen: tuple[str, ...]
    json: bool
    verbose: int = 0
    max_price: Price | None = None
    standalone: bool = False
    listen_given: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DiscoveryOptions:
        """The parsed arguments as typed options.

        Raises:
            UsageError: a ``--max-price`` that is not whole micro-units.
        """
        return cls(
            identity=identity_path(args),
            swarm=SwarmOptions.from_args(args),
            task=args.task,
            model=args.model,
            timeout=args.timeout,
            listen=tuple(args.listen or DEFAULT_LISTEN),
            json=args.json,
            verbose=args.verbose,
            max_price=(
                parse_price(args.max_price, "--max-price")
                if getattr(args, "max_price", None)
                else None
            ),
            standalone=getattr(args, "standalone", False),
            listen_given=args.listen is not None,
        )

    def wanted(self) -> tuple[str | None, str | None]:
        """(task, model ID) to find, from ``--task`` or ``--model``.

        Raises:
            UsageError: neither or both given.
            InvalidModelIdError: ``--model`` is not a model ID.
        """
        if (self.task is None) == (self.model is None):
            raise UsageError("give exactly one of --task TAG or --model MODEL_ID")
        if self.model is None:
            return self.task, None
        from p2pnet.core.model_id import parse_model_id

        return self.task, parse_model_id(self.model)

    def target(self, join: SwarmJoin) -> tuple[str | None, str | None]:
        """(task, model ID) to find, from ``--task`` or ``--model``.

        Raises:
            UsageError: neither or both given, or no bootstrap peer to ask.
            InvalidModelIdError: ``--model`` is not a model ID.
        """
        task, model = self.wanted()
        if not join.bootstrap:
            raise UsageError(
                "finding models needs a swarm to ask: give --bootstrap "
                "/ip4/.../tcp/PORT/p2p/12D3... or --swarm NAME"
            )
        return task, model

    def joining_peer(self, identity: Identity, join: SwarmJoin) -> Peer:
        """A peer that serves nothing and fails to start unless it joins the swarm; the
        receipts of its calls go to the identity's ledger, and a sample of them is
        spot-checked as ``[trust]`` says (``finish_checks`` before it stops); it skips
        the providers the identity's trust store marks untrusted."""
        from p2pnet.config import load_trust
        from p2pnet.ledger import default_ledger_path
        from p2pnet.peer import Peer
        from p2pnet.trust import default_trust_path

        return Peer(
            identity,
            ledger=default_ledger_path(identity.peer_id),
            accounting=accounting_config(),
            trust_store=default_trust_path(identity.peer_id),
            spot_checks=load_trust(),
            dht=dht_config(),
            listen=self.listen,
            bootstrap=join.bootstrap,
            swarm_key=join.swarm_key,
            require_join=True,
        )

    def calling_peer(self, identity: Identity, join: SwarmJoin) -> Peer:
        """A peer that joins nothing, to call a given peer (ADDRESS MODEL_ID): the
        receipts of its calls go to the identity's ledger."""
        from p2pnet.ledger import default_ledger_path
        from p2pnet.peer import Peer

        return Peer(
            identity,
            ledger=default_ledger_path(identity.peer_id),
            accounting=accounting_config(),
            listen=self.listen,
            swarm_key=join.swarm_key,
        )


def _running_api(options: DiscoveryOptions) -> tuple[RunningApi, str] | None:
    """The API of the running peer of the command's identity, and its peer ID, when the
    command may use it: a peer of that identity runs and serves its API, and the command
    has no ``--standalone`` and no ``--listen``. Says why not with ``-v``.

    Raises:
        ConfigError: the identity or the token file cannot be used.
    """
    from p2pnet.gateway.settings import running_api
    from p2pnet.net.identity import load_identity as read_identity
    from p2pnet.net.identity import peer_id_of

    if options.standalone:
        log.info("--standalone: starting a peer of this command's own")
        return None
    key = options.identity or default_identity_path()
    if not key.exists():
        log.info("no running peer of identity %s (no key file yet): starting one", key)
        return None
    peer_id = peer_id_of(read_identity(key))
    found = running_api(peer_id)
    if found is None:
        log.info("no running peer of identity %s serves its API: starting one", peer_id)
        return None
    if options.listen_given:
        log.info("--listen: starting a peer of this command's own, not using %s", found.url)
        return None
    return found, peer_id


async def running_peer_api(options: DiscoveryOptions) -> ApiClient | None:
    """The local API of the running peer of the command's identity, when the command
    should use it rather than start a peer of its own (docs/cli.md, "A running peer"):
    a peer of that identity runs and serves its API, and the command has no
    ``--standalone``, no ``--listen``, and no network of its own: a ``--swarm-key`` (or
    ``--swarm``'s key) other than the running peer's, or a ``--bootstrap`` (or
    ``--swarm``'s bootstrap peer) that is neither the running peer nor connected to it.
    Says why not with ``-v``. The client is to be entered (``async with``).

    Raises:
        ConfigError: the identity, the token file or the swarm cannot be used.
    """
    from p2pnet.gateway.client import ApiClient

    running = _running_api(options)
    if running is None:
        return None
    found, peer_id = running
    api = ApiClient(found.url, found.token)
    try:
        reason = _why_not(await _live_status(api.status), found.url, peer_id, options.swarm)
    except BaseException:
        await api.aclose()
        raise
    if reason is not None:
        await api.aclose()
        log.info("%s: starting a peer of this command's own", reason)
        return None
    log.info("using the running peer %s (pid %d) at %s", peer_id, found.pid, found.url)
    return api


def running_peer_client(options: DiscoveryOptions) -> BlockingApiClient | None:
    """``running_peer_api`` without trio: the same rule, decided by the same status asked
    live, for the one-shot ``find`` and ``call`` (a ``BlockingApiClient``, to be closed:
    ``with``).

    Raises:
        ConfigError: the identity, the token file or the swarm cannot be used.
    """
    from p2pnet.gateway.client import BlockingApiClient

    running = _running_api(options)
    if running is None:
        return None
    found, peer_id = running
    api = BlockingApiClient(found.url, found.token)
    try:
        reason = _why_not(_live_status_now(api.status), found.url, peer_id, options.swarm)
    except BaseException:
        api.close()
        raise
    if reason is not None:
        api.close()
        log.info("%s: starting a peer of this command's own", reason)
        return None
    log.info("using the running peer %s (pid %d) at %s", peer_id, found.pid, found.url)
    return api


def _why_not(status: PeerStatus | None, url: str, peer_id: str, swarm: SwarmOptions) -> str | None:
    """Why the command should not use the API at ``url`` that answered with ``status``
    (None: it should): it did not answer with the status of ``peer_id``, or ``swarm``
    names another network.

    Raises:
        ConfigError: the swarm cannot be used.
    """
    if status is None:
        return f"the API at {url} does not answer"
    if status.peer_id != peer_id:
        return f"the API at {url} is peer {status.peer_id}'s"
    if swarm.name is None and swarm.swarm_key is None and not swarm.bootstrap:
        return None
    return _other_network(status, swarm.resolve())


async def _live_status(ask: Callable[[], Awaitable[dict[str, Any]]]) -> PeerStatus | None:
    """The running peer's status, asked now (``ask``: ``ApiClient.status``); None when
    its API does not answer, or not with a status (a stale status file, a port another
    program took since).

    Raises:
        ConfigError: the API refused the token.
    """
    from p2pnet.errors import NetworkError, ProtocolError

    try:
        return _peer_status(await ask())
    except (NetworkError, ProtocolError, KeyError, TypeError, ValueError) as exc:
        log.debug("the running peer's status: %s", exc)
        return None


def _live_status_now(ask: Callable[[], dict[str, Any]]) -> PeerStatus | None:
    """``_live_status`` of a ``BlockingApiClient.status``."""
    from p2pnet.errors import NetworkError, ProtocolError

    try:
        return _peer_status(ask())
    except (NetworkError, ProtocolError, KeyError, TypeError, ValueError) as exc:
        log.debug("the running peer's status: %s", exc)
        return None


def _peer_status(data: dict[str, Any]) -> PeerStatus:
    from p2pnet.status import PeerStatus

    return PeerStatus.from_dict(data)


def _other_network(status: PeerStatus, join: SwarmJoin) -> str | None:
    """Why ``join`` is not the network of the running peer of ``status`` (None: it is):
    its swarm key differs, or a bootstrap peer is neither that peer nor connected to it.

    Raises:
        ConfigError: the swarm key file cannot be read.
    """
    from p2pnet.core.address import parse_peer_address
    from p2pnet.errors import InvalidAddressError
    from p2pnet.net.swarm_key import load_swarm_key

    theirs = status.swarm_key_fingerprint
    mine = load_swarm_key(join.swarm_key).fingerprint if join.swarm_key is not None else None
    if mine != theirs:
        return f"the running peer's swarm key is {theirs or 'none'}; this one's {mine or 'none'}"
    connected = {c.peer_id for c in status.connections} | {status.peer_id}
    for address in join.bootstrap:
        try:
            other = parse_peer_address(address).peer_id
        except InvalidAddressError:
            return f"--bootstrap {address!r:.80} is not a peer address"
        if other not in connected:
            return f"the running peer is not connected to the bootstrap peer {other}"
    return None
