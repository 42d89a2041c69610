"""Where p2pnet keeps its files: configuration under ``$XDG_CONFIG_HOME/p2pnet/`` (default
``~/.config/p2pnet/``), data (the ledger) under ``$XDG_DATA_HOME/p2pnet/`` (default
``~/.local/share/p2pnet/``)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pnet.errors import ConfigError

# The types of the tables' values are imported where a table is read (and by the
# default factories below), not here: the command line finds its directories, its
# identity and its swarms without loading the DHT core or numpy
# (tests/test_cli_imports.py).
if TYPE_CHECKING:
    from p2pnet.core.connections import ConnectionLimits
    from p2pnet.core.credit import CreditPolicy
    from p2pnet.core.generation import SessionLimits
    from p2pnet.core.kad.diversity import DiversityLimits
    from p2pnet.core.spot_check import SpotCheckPolicy, Tolerance

__all__ = [
    "CreditConfig",
    "DhtSettings",
    "SwarmConfig",
    "SwarmJoin",
    "config_dir",
    "config_path",
    "data_dir",
    "default_identity_path",
    "load_credit",
    "load_dht",
    "load_swarm",
    "load_swarms",
    "load_trust",
    "resolve_swarm",
    "runtime_dir",
]


def config_dir() -> Path:
    """The p2pnet configuration directory (not created here)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "p2pnet"


def data_dir() -> Path:
    """The p2pnet data directory, where the ledger lives (not created here):
    ``$XDG_DATA_HOME/p2pnet``, default ``~/.local/share/p2pnet``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "p2pnet"


def default_identity_path() -> Path:
    """The peer identity key used when none is named."""
    return config_dir() / "identity.key"


# --- config.toml: named swarms ---------------------------------------------------------------

_SWARM_KEYS = ("bootstrap", "swarm_key")


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    """A named swarm from the config file.

    bootstrap: multiaddrs (``.../p2p/<peer-id>`` or ``/dnsaddr/...``) to join through.
    swarm_key: the private network's key file, or None for an open swarm.
    """

    name: str
    bootstrap: tuple[str, ...]
    swarm_key: Path | None = None


def config_path() -> Path:
    """The configuration file: ``config.toml`` in the configuration directory."""
    return config_dir() / "config.toml"


def load_swarms(path: Path | None = None) -> dict[str, SwarmConfig]:
    """The ``[swarms.NAME]`` tables of the config file (none if there is no file).

    ::

        [swarms.lab]
        bootstrap = ["/ip4/10.0.0.5/tcp/4001/p2p/12D3KooW...", "/dnsaddr/boot.lab.example"]
        swarm_key = "lab.key"          # optional; relative to the config directory

    Raises:
        ConfigError: the file is not TOML, or a table or value is wrong; the message
            names the file, the table and the key (and the line, for TOML errors).
    """
    path = path or config_path()
    data = _read_config(path)
    swarms = data.get("swarms", {})
    if not isinstance(swarms, dict):
        raise ConfigError(f"{path}: 'swarms' must be a table of [swarms.NAME] tables")
    return {name: _swarm(path, name, table) for name, table in swarms.items()}


def _read_config(path: Path) -> dict[str, object]:
    """The config file's tables (none if there is no file).

    Raises:
        ConfigError: it cannot be read or is not TOML.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


# --- config.toml: credit ---------------------------------------------------------------------

_CREDIT_KEYS = (
    "allowance_rate",
    "soft_threshold",
    "hard_threshold",
    "ack_every_calls",
    "ack_every_units",
)


def _default_credit_policy() -> CreditPolicy:
    from p2pnet.core.credit import DEFAULT_CREDIT_POLICY

    return DEFAULT_CREDIT_POLICY


@dataclass(frozen=True, slots=True)
class CreditConfig:
    """The ``[credit]`` table: what callers may owe a peer that keeps accounts, and how
    often it acknowledges what it owes others (docs/incentives.md has the defaults and
    why)."""

    policy: CreditPolicy = field(default_factory=_default_credit_policy)
    ack_every_calls: int = 16
    ack_every_units: int = 1_000_000


def load_credit(path: Path | None = None) -> CreditConfig:
    """The ``[credit]`` table of the config file (the defaults if there is none).

    ::

        [credit]
        allowance_rate = 10000      # micro-units of debt forgiven per second
        soft_threshold = 10000000   # ask to settle from here
        hard_threshold = 12500000   # refuse beyond (default 1.25 x soft_threshold)
        ack_every_calls = 16        # acknowledge a provider's running total this often
        ack_every_units = 1000000   # ... or once this many micro-units accrued

    Raises:
        ConfigError: the file is not TOML, or a key is unknown or not a whole number in
            range; the message names the file and the key.
    """
    from p2pnet.core.credit import CreditPolicy

    table, where = _section(path or config_path(), "credit", _CREDIT_KEYS)
    for key in table:
        _whole_number(where, table, key, 0)
    default = _default_credit_policy()
    soft = table.get("soft_threshold", default.soft_threshold)
    try:
        policy = CreditPolicy(
            allowance_rate=table.get("allowance_rate", default.allowance_rate),
            soft_threshold=soft,
            hard_threshold=table.get("hard_threshold", soft + soft // 4),
        )
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    defaults = CreditConfig()
    return CreditConfig(
        policy,
        table.get("ack_every_calls", defaults.ack_every_calls),
        table.get("ack_every_units", defaults.ack_every_units),
    )


# --- config.toml: trust ----------------------------------------------------------------------

_TRUST_KEYS = (
    "spot_check_rate",
    "max_concurrent_checks",
    "check_timeout",
    "atol",
    "rtol",
    "models",
)
_TOLERANCE_KEYS = ("atol", "rtol")


def load_trust(path: Path | None = None) -> SpotCheckPolicy:
    """The ``[trust]`` table of the config file: how this peer spot-checks the providers
    it calls (the defaults if there is none; docs/security.md, "Spot checks").

    ::

        [trust]
        spot_check_rate = 0.05        # fraction of calls re-run elsewhere (0: none)
        max_concurrent_checks = 2     # checks at once; a call sampled beyond is not checked
        check_timeout = 30.0          # seconds a re-run may take
        atol = 1e-4                   # float outputs agree within atol + rtol * |b|
        rtol = 1e-3

        [trust.models.bafkrei...]     # a model of its own tolerance
        atol = 1e-2

    Raises:
        ConfigError: the file is not TOML, or a key is unknown or out of range; the
            message names the file and the key.
    """
    from p2pnet.core.spot_check import DEFAULT_SPOT_CHECKS, SpotCheckPolicy, TolerancePolicy

    path = path or config_path()
    table, where = _section(path, "trust", _TRUST_KEYS)
    default = DEFAULT_SPOT_CHECKS
    models = table.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"{where}: models must be a table of [trust.models.MODEL-ID] tables")
    try:
        base = _tolerance(where, table, default.tolerances.default, _TRUST_KEYS)
        per_model = {
            model_id: _tolerance(f"{path}: [trust.models.{model_id}]", entry, base)
            for model_id, entry in models.items()
        }
        rate = _number(where, table, "spot_check_rate", default.rate)
        concurrent = table.get("max_concurrent_checks", default.max_concurrent)
        if type(concurrent) is not int:
            raise ConfigError(f"{where}: max_concurrent_checks must be a whole number")
        return SpotCheckPolicy(
            rate=rate,
            tolerances=TolerancePolicy(base, per_model),
            max_concurrent=concurrent,
            timeout=_number(where, table, "check_timeout", default.timeout),
        )
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# --- config.toml: dht ------------------------------------------------------------------------

_DHT_KEYS = ("diversity", "local_addresses", "paths")
# core.kad.lookup.DEFAULT_LOOKUP_PATHS, written out so that reading the config file needs
# no DHT code (tests/test_dht_disjoint.py checks that they agree).
_DEFAULT_LOOKUP_PATHS = 1


def _default_diversity() -> DiversityLimits:
    from p2pnet.core.kad.diversity import DiversityLimits

    return DiversityLimits()


@dataclass(frozen=True, slots=True)
class DhtSettings:
    """The ``[dht]`` table: the DHT's IP-group limits (None: off), for
    ``DhtDefences.diversity``, and the disjoint paths each lookup runs over, for
    ``DhtDefences.paths``."""

    diversity: DiversityLimits | None = field(default_factory=_default_diversity)
    paths: int = _DEFAULT_LOOKUP_PATHS


def load_dht(path: Path | None = None) -> DhtSettings:
    """The ``[dht]`` table of the config file (the defaults if there is none;
    docs/security.md, "IP-group limits" and "Disjoint lookup paths").

    ::

        [dht]
        diversity = true              # at most 2 peers of one /16 (IPv6: /32) per bucket,
                                      # 3 per routing table, 3 per lookup answer
        local_addresses = "exempt"    # loopback and private addresses are in no group;
                                      # "grouped": limited like public ones
        paths = 1                     # disjoint paths per lookup (1 to 16)

    Raises:
        ConfigError: the file is not TOML, or a key is unknown or of the wrong value or
            out of range; the message names the file and the key.
    """
    from p2pnet.core.kad.diversity import LOCAL_ADDRESSES, DiversityLimits

    table, where = _section(path or config_path(), "dht", _DHT_KEYS)
    diversity = table.get("diversity", True)
    if not isinstance(diversity, bool):
        raise ConfigError(f"{where}: diversity must be true or false, not {diversity!r:.40}")
    local = table.get("local_addresses", "exempt")
    if local not in LOCAL_ADDRESSES:
        raise ConfigError(
            f'{where}: local_addresses must be "exempt" or "grouped", not {local!r:.40}'
        )
    paths = table.get("paths", _DEFAULT_LOOKUP_PATHS)
    if type(paths) is not int or not 1 <= paths <= 16:
        raise ConfigError(f"{where}: paths must be a whole number from 1 to 16, not {paths!r:.40}")
    return DhtSettings(DiversityLimits(local_addresses=local) if diversity else None, paths)


# --- config.toml: sessions -------------------------------------------------------------------

_SESSION_KEYS = ("max_sessions", "max_session_mib", "idle_timeout")


def load_sessions(path: Path | None = None) -> SessionLimits:
    """The ``[sessions]`` table of the config file: what this peer keeps for the
    generation sessions of each generative model it serves (the defaults if there is
    none; docs/models.md, "Sessions").

    ::

        [sessions]
        max_sessions = 16             # open at once, per model; one more is refused
        max_session_mib = 64          # cache memory of one session
        idle_timeout = 300.0          # seconds a session is kept after its last turn

    Raises:
        ConfigError: the file is not TOML, or a key is unknown or out of range; the
            message names the file and the key.
    """
    from p2pnet.core.generation import SessionLimits

    table, where = _section(path or config_path(), "sessions", _SESSION_KEYS)
    default = SessionLimits()
    try:
        return SessionLimits(
            max_sessions=_whole_number(where, table, "max_sessions", default.max_sessions),
            max_session_bytes=_whole_number(
                where, table, "max_session_mib", default.max_session_bytes >> 20
            )
            << 20,
            idle_timeout=_number(where, table, "idle_timeout", default.idle_timeout),
        )
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# --- config.toml: connections ----------------------------------------------------------------

_CONNECTION_KEYS = ("low_water", "high_water", "grace_period")


def load_connections(path: Path | None = None) -> ConnectionLimits:
    """The ``[connections]`` table of the config file: how many connections the peer
    keeps open (the defaults if there is none; docs/networking.md, "Connections").

    ::

        [connections]
        low_water = 64                # idle connections are closed down to this many...
        high_water = 96               # ...once there are more than this many
        grace_period = 20.0           # seconds a connection is kept after its last use

    Raises:
        ConfigError: the file is not TOML, or a key is unknown or out of range; the
            message names the file and the key.
    """
    from p2pnet.core.connections import ConnectionLimits

    table, where = _section(path or config_path(), "connections", _CONNECTION_KEYS)
    default = ConnectionLimits()
    try:
        return ConnectionLimits(
            low_water=_whole_number(where, table, "low_water", default.low_water),
            high_water=_whole_number(where, table, "high_water", default.high_water),
            grace_period=_number(where, table, "grace_period", default.grace_period),
        )
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _section(path: Path, name: str, keys: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """The ``[name]`` table of the config file at ``path`` (empty if absent), and where it
    is, for messages.

    Raises:
        ConfigError: not a table, or a key not in ``keys``.
    """
    table = _read_config(path).get(name, {})
    where = f"{path}: [{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    _refuse_unknown_keys(where, table, keys)
    return table, where


def _refuse_unknown_keys(
    where: str, table: dict[str, Any], allowed: tuple[str, ...], listed_as: str | None = "it has"
) -> None:
    """Raise ConfigError naming the first key of ``table`` not in ``allowed`` (listing
    them after ``listed_as``, unless None)."""
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        listing = f"; {listed_as}: {', '.join(allowed)}" if listed_as else ""
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{listing}")


def _whole_number(where: str, table: dict[str, Any], key: str, default: int) -> int:
    value = table.get(key, default)
    if type(value) is not int or value < 0:
        raise ConfigError(f"{where}: {key} must be a whole number >= 0, not {value!r:.40}")
    return value


def _number(where: str, table: dict[str, object], key: str, default: float) -> float:
    value = table.get(key, default)
    if type(value) not in (int, float):
        raise ConfigError(f"{where}: {key} must be a number, not {value!r:.40}")
    return float(value)  # type: ignore[arg-type]


def _tolerance(
    where: str, table: object, base: Tolerance, allowed: tuple[str, ...] = _TOLERANCE_KEYS
) -> Tolerance:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table (atol = ..., rtol = ...)")
    _refuse_unknown_keys(where, table, allowed, listed_as=None)
    from p2pnet.core.spot_check import Tolerance

    return Tolerance(
        atol=_number(where, table, "atol", base.atol),
        rtol=_number(where, table, "rtol", base.rtol),
    )


def _swarm(path: Path, name: str, table: object) -> SwarmConfig:
    where = f"{path}: [swarms.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f'{where} must be a table (bootstrap = [...], swarm_key = "...")')
    _refuse_unknown_keys(where, table, _SWARM_KEYS, listed_as="a swarm has")
    bootstrap = table.get("bootstrap", [])
    if not isinstance(bootstrap, list) or not all(isinstance(a, str) for a in bootstrap):
        raise ConfigError(f"{where}: bootstrap must be a list of multiaddr strings")
    from p2pnet.core.address import parse_peer_address
    from p2pnet.errors import InvalidAddressError

    for i, addr in enumerate(bootstrap):
        if addr.strip().startswith("/dnsaddr/"):
            continue
        try:
            parse_peer_address(addr)
        except InvalidAddressError as exc:
            raise ConfigError(f"{where}: bootstrap[{i}]: {exc}") from None
        if not addr.strip().startswith("/"):
            raise ConfigError(
                f"{where}: bootstrap[{i}] {addr!r} is a bare peer ID; give its address "
                "(/ip4/.../tcp/PORT/p2p/12D3...) or a /dnsaddr/ name"
            )
    key = table.get("swarm_key")
    if key is not None and (not isinstance(key, str) or not key):
        raise ConfigError(f"{where}: swarm_key must be the path of a swarm key file")
    key_path = None
    if key is not None:
        key_path = Path(key).expanduser()
        if not key_path.is_absolute():
            key_path = path.parent / key_path
    return SwarmConfig(name, tuple(bootstrap), key_path)


def load_swarm(name: str, path: Path | None = None) -> SwarmConfig:
    """The swarm called ``name`` in the config file.

    Raises:
        ConfigError: no such swarm (the message lists those there are), or a bad file.
    """
    path = path or config_path()
    swarms = load_swarms(path)
    if name not in swarms:
        known = ", ".join(sorted(swarms)) or f"none; add a [swarms.{name}] table to {path}"
        raise ConfigError(f"no swarm {name!r} in {path}; swarms there: {known}")
    return swarms[name]


@dataclass(frozen=True, slots=True)
class SwarmJoin:
    """How a peer joins its swarm: the bootstrap peers to dial (none: a new swarm), and
    the private network's key file (None: an open swarm)."""

    bootstrap: tuple[str, ...]
    swarm_key: Path | None


def resolve_swarm(
    name: str | None,
    *,
    bootstrap: Sequence[str] = (),
    swarm_key: Path | None = None,
    path: Path | None = None,
) -> SwarmJoin:
    """The bootstrap peers and swarm key of the swarm ``name`` of the config file (None:
    none), together with those given explicitly (``--bootstrap``, ``--swarm-key``): the
    swarm's bootstrap peers come after the given ones, and a given key wins over the
    swarm's.

    Raises:
        ConfigError: no such swarm, or a bad config file.
    """
    if name is None:
        return SwarmJoin(tuple(bootstrap), swarm_key)
    swarm = load_swarm(name, path)
    return SwarmJoin(
        (*bootstrap, *swarm.bootstrap),
        swarm_key if swarm_key is not None else swarm.swarm_key,
    )


def runtime_dir() -> Path:
    """Where running peers leave their status files: ``$XDG_RUNTIME_DIR/p2pnet``, or
    ``run/`` in the configuration directory (not created here)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "p2pnet" if base else config_dir() / "run"
