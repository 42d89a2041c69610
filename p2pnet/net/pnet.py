"""Private networks: libp2p's pre-shared key (PSK v1) around every TCP connection.

Spec: libp2p/specs pnet/Private-Networks-PSK-V1.md. Each side sends a random 24-byte
nonce, then everything it writes is XORed with the XSalsa20 key stream of (PSK, its
nonce); it decrypts what it reads with the stream of (PSK, the other side's nonce).
The layer sits under the security handshake (Noise): a peer with another key, or with
none, never gets as far as Noise.

py-libp2p 0.8.1 has a ``psk=`` parameter, but its ``security/pnet/psk_conn.py`` uses
Salsa20 with an 8-byte nonce, not XSalsa20 with a 24-byte one: it cannot talk to
go-libp2p, js-libp2p or rust-libp2p private networks, and it reads the key as 64 hex
characters rather than the swarm key file. p2pnet keeps py-libp2p's hook (the swarm
wraps each raw connection, inbound and outbound, with ``new_protected_conn(conn, psk)``
before the security upgrade) and puts the spec's cipher behind it: a host opened with
a SwarmKey passes a ``_SwarmPsk`` as ``psk``, and the hook installed here wraps its
connections in ``PnetConnection``; any other ``psk`` still goes to py-libp2p's own.

The spec has no key check: a mismatch shows as garbage. Every libp2p TCP connection
starts with the multistream-select header (``\\x13/multistream/1.0.0\\n``), so the
first 20 bytes read are checked against it: another key or a peer with no key fails
at once with PnetHandshakeError instead of feeding garbage to multistream-select,
and a peer that sends too little fails after ``handshake_timeout`` seconds. Nothing
on the wire differs from the spec.

Key file (what go-libp2p and js-libp2p read; ``swarm.key`` in IPFS)::

    /key/swarm/psk/1.0.0/
    /base16/
    <64 hex digits>

``/base64/`` and ``/bin/`` encodings are read too; ``format_swarm_key`` writes base16.
Key files are their owner's alone (mode 0600): ``load_swarm_key`` refuses others, and
``write_swarm_key_file`` and ``restrict_swarm_key_output`` make them so.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import libp2p.network.swarm as _swarm_module
import trio
from Crypto.Cipher import Salsa20
from libp2p.abc import IRawConnection
from libp2p.connection_types import ConnectionType
from multiaddr import Multiaddr

from p2pnet.errors import ConfigError

__all__ = [
    "KEY_HEADER",
    "PnetConnection",
    "PnetHandshakeError",
    "SwarmKey",
    "format_swarm_key",
    "generate_swarm_key",
    "install_pnet_hook",
    "load_swarm_key",
    "parse_swarm_key",
    "protect_relayed_dials",
    "psk_for",
    "recent_failure",
    "restrict_swarm_key_output",
    "write_swarm_key_file",
    "xsalsa20_stream",
]

KEY_HEADER: Final = "/key/swarm/psk/1.0.0/"
NONCE_SIZE: Final = 24
KEY_SIZE: Final = 32
# What every libp2p TCP connection sends first: the multistream-select 1.0.0 header.
_FIRST_PLAINTEXT: Final = b"\x13/multistream/1.0.0\n"
# Seconds the other side has to send its nonce and first bytes.
DEFAULT_HANDSHAKE_TIMEOUT: Final = 5.0
# Seconds after a failed handshake during which dials to the same address fail at once.
DEFAULT_RETRY_WINDOW: Final = 3.0


@dataclass(frozen=True, slots=True)
class SwarmKey:
    """A private network's 32-byte pre-shared key.

    ``repr`` and ``str`` never show the key; ``fingerprint`` names it safely.
    """

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise ConfigError(f"a swarm key has {KEY_SIZE} bytes, not {len(self.key)}")

    @property
    def fingerprint(self) -> str:
        """16 hex digits that name the key without revealing it (p2pnet's own scheme:
        SHA-256 of a fixed label and the key, truncated), to compare keys across peers."""
        return hashlib.sha256(b"p2pnet swarm key fingerprint\0" + self.key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"SwarmKey(fingerprint={self.fingerprint})"

    __str__ = __repr__


def generate_swarm_key() -> SwarmKey:
    """A new random swarm key."""
    return SwarmKey(os.urandom(KEY_SIZE))


def format_swarm_key(key: SwarmKey) -> str:
    """The key file text: header, ``/base16/``, 64 lower-case hex digits, newline."""
    return f"{KEY_HEADER}\n/base16/\n{key.key.hex()}\n"


def write_swarm_key_file(key: SwarmKey, path: Path | str) -> Path:
    """Write ``key`` to the new file ``path``, readable by its owner only (mode 0600). A
    file that exists is never replaced: it may hold the key of a running grid.

    Raises:
        ConfigError: ``path`` exists or cannot be created.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; a swarm key is never overwritten") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as f:
        f.write(format_swarm_key(key))
    return path


def restrict_swarm_key_output(fd: int) -> bool:
    """Make the file open at ``fd`` readable by its owner only (mode 0600) if it is a
    regular file of this user: ``p2pnet swarm-key new > grid.key`` writes into a file the
    shell created with the umask's mode (often 0644), which ``load_swarm_key`` refuses.
    Returns whether it was such a file; a terminal, a pipe or another user's file is
    left as it is.

    Raises:
        OSError: ``fd`` is not open, or its mode cannot be changed.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        return False
    os.fchmod(fd, 0o600)
    return True


def parse_swarm_key(data: bytes, source: str = "swarm key") -> SwarmKey:
    """Read a swarm key file's bytes (base16, base64 or bin encoding).

    Raises:
        ConfigError: not a swarm key file, naming what is wrong.
    """
    header, sep, rest = data.partition(b"\n")
    if header.rstrip(b"\r") != KEY_HEADER.encode():
        raise ConfigError(
            f"{source} is not a swarm key file: its first line must be {KEY_HEADER!r} "
            "(create one with: p2pnet swarm-key new > grid.key)"
        )
    encoding, sep, body = rest.partition(b"\n")
    encoding = encoding.rstrip(b"\r")
    if not sep:
        raise ConfigError(f"{source}: missing the encoding line (/base16/, /base64/ or /bin/)")
    if encoding == b"/bin/":
        key = body[:KEY_SIZE]
        if len(key) != KEY_SIZE or body[KEY_SIZE:] not in (b"", b"\n", b"\r\n"):
            raise ConfigError(f"{source}: a /bin/ key is exactly {KEY_SIZE} bytes")
        return SwarmKey(key)
    text = body.strip()
    try:
        if encoding == b"/base16/":
            key = bytes.fromhex(text.decode("ascii"))
        elif encoding == b"/base64/":
            key = base64.b64decode(text, validate=True)
        else:
            raise ConfigError(
                f"{source}: unknown key encoding {encoding.decode(errors='replace')!r}; "
                "one of /base16/, /base64/, /bin/"
            )
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ConfigError(
            f"{source}: the key is not valid {encoding.decode().strip('/')}"
        ) from None
    if len(key) != KEY_SIZE:
        raise ConfigError(f"{source}: the key has {len(key)} bytes; a swarm key has {KEY_SIZE}")
    return SwarmKey(key)


def load_swarm_key(path: Path | str) -> SwarmKey:
    """Read a swarm key file, refusing one that other users can read or write.

    Raises:
        ConfigError: unreadable, accessible by others (as identity keys), or malformed.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read swarm key {path}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"swarm key {path} is accessible by other users (mode {stat.filemode(mode)}); "
            f"anyone who reads it can join the private network; run: chmod 600 {path}"
        )
    return parse_swarm_key(data, f"swarm key {path}")


# --- XSalsa20 ------------------------------------------------------------------------------


def _rotl(v: int, c: int) -> int:
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def _hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    """HSalsa20 (XSalsa20 paper, section 2): the subkey for the last 8 nonce bytes."""
    s = struct.unpack("<4I", b"expand 32-byte k")
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", nonce16)
    x = [s[0], *k[:4], s[1], *n, s[2], *k[4:], s[3]]

    def quarter(a: int, b: int, c: int, d: int) -> None:
        x[b] ^= _rotl((x[a] + x[d]) & 0xFFFFFFFF, 7)
        x[c] ^= _rotl((x[b] + x[a]) & 0xFFFFFFFF, 9)
        x[d] ^= _rotl((x[c] + x[b]) & 0xFFFFFFFF, 13)
        x[a] ^= _rotl((x[d] + x[c]) & 0xFFFFFFFF, 18)

    for _ in range(10):
        quarter(0, 4, 8, 12)
        quarter(5, 9, 13, 1)
        quarter(10, 14, 2, 6)
        quarter(15, 3, 7, 11)
        quarter(0, 1, 2, 3)
        quarter(5, 6, 7, 4)
        quarter(10, 11, 8, 9)
        quarter(15, 12, 13, 14)
    return struct.pack("<8I", x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9])


def xsalsa20_stream(key: bytes, nonce: bytes) -> Any:
    """An XSalsa20 cipher: ``.encrypt(data)`` XORs the next key stream bytes into data.

    XSalsa20 is Salsa20 keyed with HSalsa20(key, nonce[:16]) and nonce[16:]; the
    Salsa20 part is pycryptodome's (a py-libp2p dependency), which keeps its position
    across calls. Checked against libsodium's XSalsa20 in tests/test_private_grid.py.
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"XSalsa20 takes a {NONCE_SIZE}-byte nonce")
    return Salsa20.new(key=_hsalsa20(key, nonce[:16]), nonce=nonce[16:])


# --- connections ---------------------------------------------------------------------------


class PnetHandshakeError(ConnectionError):
    """The other side is not in this private network: it has another swarm key, or none."""


class _Protector:
    """One host's key, handshake timeout and recent handshake failures.

    py-libp2p retries a failed dial three times (after 0.1, 0.2 and 0.4 s); a private
    network handshake that failed fails again, and one that timed out would time out
    again, so a dial to an address whose handshake failed less than
    ``retry_window`` seconds ago fails at once with the same error. The failures are
    also how the host names the cause: py-libp2p's dial error drops it.
    """

    def __init__(self, key: SwarmKey, handshake_timeout: float, retry_window: float) -> None:
        self.key = key
        self.handshake_timeout = handshake_timeout
        self.retry_window = retry_window
        self._failures: dict[tuple[str, int], tuple[float, str]] = {}

    def record_failure(self, remote: tuple[str, int] | None, message: str) -> None:
        if remote is None:
            return
        now = time.monotonic()
        self._failures = {a: f for a, f in self._failures.items() if now - f[0] < self.retry_window}
        self._failures[(remote[0], remote[1])] = (now, message)

    def recent_failure(self, remote: tuple[str, int] | None) -> str | None:
        """The message of a handshake with ``remote`` that failed within the window."""
        failure = self._failures.get((remote[0], remote[1])) if remote else None
        if failure is None or time.monotonic() - failure[0] >= self.retry_window:
            return None
        return failure[1]


class PnetConnection(IRawConnection):
    """A raw connection (TCP) with the PSK layer on it."""

    def __init__(self, conn: IRawConnection, protector: _Protector) -> None:
        self._conn = conn
        self._protector = protector
        self._key = protector.key
        self.is_initiator = conn.is_initiator
        self._out_nonce = os.urandom(NONCE_SIZE)
        self._write_cipher = xsalsa20_stream(self._key.key, self._out_nonce)
        self._nonce_sent = False
        self._read_cipher: Any = None
        self._pending = b""  # decrypted bytes read during the handshake, not yet returned
        self._write_lock = trio.Lock()
        self._refused = protector.recent_failure(self._remote()) if conn.is_initiator else None

    def _remote(self) -> tuple[str, int] | None:
        try:
            return self._conn.get_remote_address()
        except Exception:  # a transport without addresses
            return None

    async def _send_nonce(self) -> None:
        async with self._write_lock:
            if not self._nonce_sent:
                self._nonce_sent = True
                await self._conn.write(self._out_nonce)

    async def write(self, data: bytes) -> None:
        if self._refused is not None:
            raise PnetHandshakeError(self._refused)
        async with self._write_lock:
            encrypted = self._write_cipher.encrypt(data)
            if not self._nonce_sent:
                self._nonce_sent = True
                encrypted = self._out_nonce + encrypted  # one write, one TCP segment
            await self._conn.write(encrypted)

    async def read(self, n: int | None = None) -> bytes:
        if self._read_cipher is None:
            if self._refused is not None:
                raise PnetHandshakeError(self._refused)
            try:
                await self._handshake()
            except PnetHandshakeError as exc:
                self._protector.record_failure(self._remote(), str(exc))
                raise
        if self._pending:
            size = len(self._pending) if n is None or n < 0 else n
            out, self._pending = self._pending[:size], self._pending[size:]
            return out
        data = await self._conn.read(n)
        if not data:
            return b""
        return bytes(self._read_cipher.encrypt(data))

    async def _handshake(self) -> None:
        """Read the other side's nonce and check the first bytes it sends."""
        # Send ours first: a listener's first move is to read, and the other side may
        # be waiting for our bytes before it sends more.
        await self._send_nonce()
        need = NONCE_SIZE + len(_FIRST_PLAINTEXT)
        timeout = self._protector.handshake_timeout
        fingerprint = self._key.fingerprint
        received = b""
        with trio.move_on_after(timeout) as scope:
            while len(received) < need:
                chunk = await self._conn.read(need - len(received))
                if not chunk:
                    break
                received += chunk
                if received.startswith(_FIRST_PLAINTEXT):
                    # A multistream-select header in the clear instead of a nonce.
                    raise PnetHandshakeError(
                        "private network handshake failed: the other side is in no private "
                        f"network (it has no swarm key; this peer's key: {fingerprint})"
                    )
        if len(received) < need:
            why = (
                f"sent only {len(received)} bytes in {timeout:g} s"
                if scope.cancelled_caught
                else f"closed the connection after {len(received)} bytes"
            )
            raise PnetHandshakeError(
                f"private network handshake failed: the other side {why}; it may have "
                f"no swarm key or a different one (this peer's key: {fingerprint})"
            )
        cipher = xsalsa20_stream(self._key.key, received[:NONCE_SIZE])
        first = bytes(cipher.encrypt(received[NONCE_SIZE:]))
        if first != _FIRST_PLAINTEXT:
            raise PnetHandshakeError(
                "private network handshake failed: the other side is in a private network "
                f"with a different swarm key, or in none (this peer's key: {fingerprint})"
            )
        self._read_cipher = cipher
        self._pending = first

    async def close(self) -> None:
        await self._conn.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._conn.get_remote_address()

    def get_transport_addresses(self) -> list[Multiaddr]:
        return self._conn.get_transport_addresses()

    def get_connection_type(self) -> ConnectionType:
        return self._conn.get_connection_type()


class _SwarmPsk(str):
    """What a p2pnet host passes to py-libp2p as ``psk``: a str, as py-libp2p expects,
    carrying the host's _Protector for the hook below. Its text is the key's
    fingerprint, never the key: nothing that logs it leaks the key."""

    protector: _Protector

    def __new__(cls, protector: _Protector) -> _SwarmPsk:
        self = super().__new__(cls, protector.key.fingerprint)
        self.protector = protector
        return self


def psk_for(
    key: SwarmKey,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    retry_window: float = DEFAULT_RETRY_WINDOW,
) -> str:
    """The ``psk`` argument for py-libp2p's new_host that puts ``key`` on a host."""
    return _SwarmPsk(_Protector(key, handshake_timeout, retry_window))


def recent_failure(psk: str | None, host: str, port: int) -> str | None:
    """Why the handshake with ``host:port`` failed within the retry window, if it did."""
    if isinstance(psk, _SwarmPsk):
        return psk.protector.recent_failure((host, port))
    return None


def protect_relayed_dials(network: Any, psk: str) -> None:
    """Put the PSK layer on outbound relayed connections of ``network`` (a swarm) too.

    py-libp2p 0.8.1 applies ``psk`` to an outbound connection in its dial functions,
    before ``upgrade_outbound_raw_conn``, and to an inbound one inside
    ``upgrade_inbound_raw_conn``. A relayed (circuit v2) dial calls
    ``upgrade_outbound_raw_conn`` directly, so the dialling side spoke in the clear
    while the listening side expected the PSK layer, and every relayed connection in
    a private network failed. Connections that already carry the layer are left alone.
    """
    upgrade = network.upgrade_outbound_raw_conn

    async def protected(raw_conn: Any, peer_id: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(raw_conn, PnetConnection):
            raw_conn = _protect(raw_conn, psk)
        return await upgrade(raw_conn, peer_id, *args, **kwargs)

    network.upgrade_outbound_raw_conn = protected


def _protect(conn: Any, psk: str) -> Any:
    if isinstance(psk, _SwarmPsk):
        return PnetConnection(conn, psk.protector)
    return _upstream_protect(conn, psk)


_upstream_protect = _swarm_module.new_protected_conn  # type: ignore[attr-defined]


def install_pnet_hook() -> None:
    """Route py-libp2p's PSK hook to this module; idempotent (``open_host`` calls it).

    py-libp2p's swarm calls the module-level ``new_protected_conn`` for every raw
    connection of a host with a psk (see the module docstring); hosts without one never
    reach it, and other ``psk`` values still go to py-libp2p's own layer.
    """
    _swarm_module.new_protected_conn = _protect  # type: ignore[attr-defined]
