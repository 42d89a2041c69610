"""Every error p2pnet raises, in one hierarchy that says whose fault it is.

    P2PNetError                      base; ``code`` is the stable wire code
    ├── UsageError                   the caller's fault: fix the call, the file, the config
    │   ├── ConfigError              bad configuration or identity file; cannot listen
    │   │   ├── LedgerError              a ledger file that cannot be used      [ledger]
    │   │   │   └── LedgerConflictError      a second, different receipt for a place
    │   │   │                                already taken in a pair's chain    [ledger_conflict]
    │   │   └── TrustStoreError          a spot-check verdict file that cannot be used
    │   │                                                                   [trust_store]
    │   ├── InvalidAddressError      text that is not a usable peer multiaddr
    │   ├── ModelFileError           a model file that cannot be read or is not valid ONNX
    │   ├── InvalidModelIdError      text that is not a model ID (a CIDv1)     [invalid_model_id]
    │   ├── UnknownModelError        the peer does not serve that model ID     [unknown_model]
    │   ├── PermissionDeniedError    the model is not served to this caller    [permission_denied]
    │   ├── InvalidInputError        inputs do not match the model's schema    [invalid_input]
    │   ├── UnknownSessionError      no such generation session: expired, closed,
    │   │                            or another caller's                       [unknown_session]
    │   ├── PipelineSpecError        a pipeline spec that cannot run           [pipeline_spec]
    │   │   └── SchemaMismatchError      its steps' models do not fit together  [schema_mismatch]
    │   └── PayloadTooLargeError     a message over the agreed size limit      [payload_too_large]
    ├── PeerError                    the remote peer's fault
    │   ├── ModelExecutionError      the model failed while running            [model_failed]
    │   ├── PeerBusyError            the peer refused the call: too busy       [busy]
    │   │   └── SessionLimitError        no room for another session, or for this
    │   │                                turn in its session                   [session_limit]
    │   ├── InternalPeerError        the peer hit a bug                        [internal]
    │   ├── OutputSchemaError        outputs that do not fit its signed schema [bad_output]
    │   ├── CreditExceededError      the caller owes more than it is allowed   [credit_exceeded]
    │   ├── StoreLimitError          a peer asked this node to store more than it allows
    │   │   ├── StoreFullError           the store or a key's provider list is full
    │   │   └── ProviderQuotaError       one provider announces too many keys here
    │   ├── InvalidRecordError       a capability record that must not be used
    │   │   ├── MalformedRecordError     not a record: bad encoding or fields  [malformed_record]
    │   │   ├── RecordTooLargeError      over the size limit                   [record_too_large]
    │   │   ├── ForgedRecordError        signature does not verify             [forged_record]
    │   │   ├── RecordKeyMismatchError   signing key is not the peer ID's key  [record_key_mismatch]
    │   │   ├── ExpiredRecordError       past its expiry                       [expired_record]
    │   │   └── StaleRecordError         older sequence than one already held  [stale_record]
    │   └── ReceiptError             a usage receipt or acknowledgement that must not be used
    │       ├── MalformedReceiptError    not a receipt: encoding, fields, size [malformed_receipt]
    │       ├── ForgedReceiptError       signature does not verify             [forged_receipt]
    │       ├── ReplayedReceiptError     a sequence number already seen        [replayed_receipt]
    │       ├── ReceiptChainError        a gap, reordering or broken link      [receipt_chain]
    │       ├── ForeignReceiptError      for another (provider, caller) pair   [foreign_receipt]
    │       └── ReceiptMismatchError     does not commit to the call made      [receipt_mismatch]
    ├── ProtocolError                bytes that break the wire protocol
    │   ├── RemoteProtocolError      the other side sent them
    │   │   └── ReplyTooLargeError       a reply over the size limit we accept [reply_too_large]
    │   └── LocalProtocolError       the other side says we sent them          [protocol_error]
    ├── NetworkError                 nobody's fault: the path between peers
    │   ├── PeerUnreachableError     could not connect
    │   └── ConnectionLostError      the connection broke during a call
    └── DeadlineExceededError        the call's time budget ran out            [deadline_exceeded]

An error raised on a serving peer travels to the caller as ``code`` plus
``message`` (see docs/protocol.md) and is raised there as the class of that
code, with ``peer`` set to the peer that reported it. An error a caller raises
about a provider (no reply in time, a broken or oversized reply, outputs that do not
fit) has ``peer`` set to that provider; other errors raised locally have ``peer``
None. An error that ends a call after several providers failed lists every attempt
in ``attempts`` (peer ID, error), the first tried first.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ConfigError",
    "ConnectionLostError",
    "CreditExceededError",
    "DeadlineExceededError",
    "ExpiredRecordError",
    "ForeignReceiptError",
    "ForgedReceiptError",
    "ForgedRecordError",
    "InternalPeerError",
    "InvalidAddressError",
    "InvalidInputError",
    "InvalidModelIdError",
    "InvalidRecordError",
    "LedgerConflictError",
    "LedgerError",
    "LocalProtocolError",
    "MalformedReceiptError",
    "MalformedRecordError",
    "ModelExecutionError",
    "ModelFileError",
    "NetworkError",
    "OutputSchemaError",
    "P2PNetError",
    "PayloadTooLargeError",
    "PeerBusyError",
    "PeerError",
    "PeerUnreachableError",
    "PermissionDeniedError",
    "PipelineSpecError",
    "ProtocolError",
    "ProviderQuotaError",
    "ReceiptChainError",
    "ReceiptError",
    "ReceiptMismatchError",
    "RecordKeyMismatchError",
    "RecordTooLargeError",
    "RemoteProtocolError",
    "ReplayedReceiptError",
    "ReplyTooLargeError",
    "SchemaMismatchError",
    "SessionLimitError",
    "StaleRecordError",
    "StoreFullError",
    "StoreLimitError",
    "TrustStoreError",
    "UnknownModelError",
    "UnknownSessionError",
    "UsageError",
    "error_from_wire",
    "wire_code_for",
]


class P2PNetError(Exception):
    """Base of every p2pnet error.

    Attributes:
        code: stable machine-readable code, the same on the wire and in ``--json`` output.
        peer: the peer ID (base58 text) that reported the error, or None if raised locally.
        fault: whose fault it is: "caller" (this side's call, file or configuration),
            "peer" (the other peer), "network" (the path between them), or "" (nobody's
            in particular: time ran out).
    """

    code: ClassVar[str] = "error"
    fault: ClassVar[str] = ""

    def __init__(self, message: str, *, peer: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.peer = peer
        # (peer ID, error) of every provider tried before this error ended a call.
        self.attempts: tuple[tuple[str, P2PNetError], ...] = ()

    def __str__(self) -> str:
        if self.peer is None:
            return self.message
        return f"{self.message} (reported by peer {self.peer})"


class UsageError(P2PNetError):
    """The caller's fault: the call, a file or the configuration is wrong."""

    code = "usage"
    fault = "caller"


class ConfigError(UsageError):
    """Configuration, identity file or address that cannot be used."""

    code = "config"


class LedgerError(ConfigError):
    """A ledger file (p2pnet/ledger) that cannot be opened, read or written: missing,
    corrupt, another program's database, a newer schema, a directory that cannot be
    written; or a receipt log that does not verify. The message names the file."""

    code = "ledger"


class LedgerConflictError(LedgerError):
    """A receipt or acknowledgement that contradicts one the ledger already holds: the
    same pair and sequence number with another hash, or a link to a predecessor that is
    not the one held. Whoever wires the ledger in decides whose fault that is (usually
    the peer that signed both)."""

    code = "ledger_conflict"


class TrustStoreError(ConfigError):
    """A trust store file (spot-check verdicts, p2pnet/trust) that cannot be opened, read
    or written: corrupt, another program's database, a newer schema, a directory that
    cannot be written. The message names the file."""

    code = "trust_store"


class InvalidAddressError(UsageError):
    """Text that is not a usable multiaddr or peer ID."""

    code = "invalid_address"


class ModelFileError(UsageError):
    """A model file that cannot be read, or is not a valid ONNX model."""

    code = "model_file"


class InvalidModelIdError(UsageError):
    """Text that is not a model ID (CIDv1, raw codec, sha2-256)."""

    code = "invalid_model_id"


class UnknownModelError(UsageError):
    """The peer does not serve the requested model ID."""

    code = "unknown_model"


class PermissionDeniedError(UsageError):
    """The peer serves the model, but not to this caller: it is not on the model's
    access list."""

    code = "permission_denied"


class InvalidInputError(UsageError):
    """Inputs that do not match the model's schema (name, dtype, rank or fixed dimension)."""

    code = "invalid_input"


class UnknownSessionError(UsageError):
    """The provider holds no generation session of that ID for this caller: it expired
    after its idle time, was closed, was dropped when the peer restarted, or is another
    caller's. Start a new session (replaying the conversation)."""

    code = "unknown_session"


class PipelineSpecError(UsageError):
    """A pipeline spec that cannot run: bad fields, unknown steps or inputs, a cycle."""

    code = "pipeline_spec"


class SchemaMismatchError(PipelineSpecError):
    """A pipeline whose steps' models do not fit: an output feeds an input of another
    dtype, rank or size, or a model input is left unfed."""

    code = "schema_mismatch"


class PayloadTooLargeError(UsageError):
    """A message larger than the limit the receiving side accepts."""

    code = "payload_too_large"


class PeerError(P2PNetError):
    """The remote peer's fault."""

    code = "peer"
    fault = "peer"


class ModelExecutionError(PeerError):
    """The model raised while running on valid-by-schema inputs."""

    code = "model_failed"


class PeerBusyError(PeerError):
    """The peer refused the call because it is at its concurrency limit."""

    code = "busy"


class SessionLimitError(PeerBusyError):
    """The provider refused to open a generation session (it holds its maximum), or a
    turn that would take a session over its memory limit. A PeerBusyError: another
    provider of the model may have room."""

    code = "session_limit"


class InternalPeerError(PeerError):
    """The serving peer hit an unexpected failure of its own."""

    code = "internal"


class OutputSchemaError(PeerError):
    """A provider's outputs do not fit the output schema of its own signed record:
    an output missing or extra, or one of another dtype, rank or size."""

    code = "bad_output"


class CreditExceededError(PeerError):
    """The provider refused the call: what the caller owes it is over its hard credit
    limit. The message says the balance, the limit and when the provider's free
    allowance will have made room; serving the provider, or waiting, settles the debt.

    A PeerError so that a caller moves on to another provider. The fields are set where
    the refusal is decided; a caller that received it has them in the message only.
    """

    code = "credit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        peer: str | None = None,
        balance: int | None = None,
        limit: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, peer=peer)
        self.balance = balance
        self.limit = limit
        self.retry_after = retry_after


class StoreLimitError(PeerError):
    """A peer asked this node to store more than one of its limits allows."""

    code = "store_limit"


class StoreFullError(StoreLimitError):
    """The store, or the key's provider list, is at its size limit."""

    code = "store_full"


class ProviderQuotaError(StoreLimitError):
    """One provider already announces as many keys as this node keeps per provider."""

    code = "provider_quota"


class InvalidRecordError(PeerError):
    """A signed capability record that must not be used; the publisher's fault."""

    code = "invalid_record"


class MalformedRecordError(InvalidRecordError):
    """Bytes that do not decode to a capability record, or a record with bad fields."""

    code = "malformed_record"


class RecordTooLargeError(InvalidRecordError):
    """A record over the size limit."""

    code = "record_too_large"


class ForgedRecordError(InvalidRecordError):
    """A record whose signature does not verify."""

    code = "forged_record"


class RecordKeyMismatchError(InvalidRecordError):
    """A record signed by a key that is not the one its peer ID names."""

    code = "record_key_mismatch"


class ExpiredRecordError(InvalidRecordError):
    """A record past its expiry time."""

    code = "expired_record"


class StaleRecordError(InvalidRecordError):
    """A record with an older sequence number than one already held for the same key."""

    code = "stale_record"


class ReceiptError(PeerError):
    """A usage receipt (or a caller's acknowledgement) that must not be used; the fault
    of the peer that signed it (docs/protocol.md, "Usage receipts")."""

    code = "receipt"


class MalformedReceiptError(ReceiptError):
    """Bytes that do not decode to a receipt or acknowledgement: bad encoding, bad
    fields, or over the size limit."""

    code = "malformed_receipt"


class ForgedReceiptError(ReceiptError):
    """A receipt or acknowledgement whose signature does not verify with the key of the
    peer that should have signed it."""

    code = "forged_receipt"


class ReplayedReceiptError(ReceiptError):
    """A receipt whose sequence number is not above the last one of its pair: sent again,
    or made up from an old one."""

    code = "replayed_receipt"


class ReceiptChainError(ReceiptError):
    """A receipt that does not extend its pair's chain: a sequence number skipped
    (reordered, or one missing) or a previous-receipt hash that is not the last one's."""

    code = "receipt_chain"


class ForeignReceiptError(ReceiptError):
    """A receipt or acknowledgement of another (provider, caller) pair than expected."""

    code = "foreign_receipt"


class ReceiptMismatchError(ReceiptError):
    """A receipt that does not commit to the call made: another model, record, request
    or result than the caller sent or received, or more units than it may charge."""

    code = "receipt_mismatch"


class ProtocolError(P2PNetError):
    """Bytes on the wire that break the protocol."""

    code = "protocol"


class RemoteProtocolError(ProtocolError):
    """The other side sent bytes that break the protocol (malformed, truncated, oversized)."""

    code = "remote_protocol"
    fault = "peer"


class ReplyTooLargeError(RemoteProtocolError):
    """A reply larger than the limit this side accepts: the replying peer's fault (a
    request over the limit is the caller's, PayloadTooLargeError)."""

    code = "reply_too_large"


class LocalProtocolError(ProtocolError):
    """The other side reports that the bytes we sent break the protocol."""

    code = "protocol_error"
    fault = "caller"


class NetworkError(P2PNetError):
    """The path between peers failed; nobody's protocol was broken."""

    code = "network"
    fault = "network"


class PeerUnreachableError(NetworkError):
    """Could not open a connection or stream to the peer."""

    code = "unreachable"


class ConnectionLostError(NetworkError):
    """The connection or stream broke before the call completed."""

    code = "connection_lost"


class DeadlineExceededError(P2PNetError):
    """The call's time budget ran out before a result arrived."""

    code = "deadline_exceeded"


# Codes a serving peer may put in an error message, and the class the caller raises for each.
_WIRE_CODES: dict[str, type[P2PNetError]] = {
    cls.code: cls
    for cls in (
        InvalidModelIdError,
        UnknownModelError,
        PermissionDeniedError,
        InvalidInputError,
        UnknownSessionError,
        PayloadTooLargeError,
        ModelExecutionError,
        PeerBusyError,
        SessionLimitError,
        CreditExceededError,
        InternalPeerError,
        LocalProtocolError,
        DeadlineExceededError,
        # A peer forwarding a pipeline reports the next hop's network failures.
        PeerUnreachableError,
        ConnectionLostError,
    )
}


def wire_code_for(error: P2PNetError) -> str:
    """The code a serving peer sends for ``error``: what the *caller* should raise.

    A server that received malformed bytes raised RemoteProtocolError locally; the
    caller must see it as its own fault, LocalProtocolError.
    """
    if isinstance(error, ProtocolError):
        return LocalProtocolError.code
    if error.code in _WIRE_CODES:
        return error.code
    return InternalPeerError.code


def error_from_wire(code: str, message: str, peer: str) -> P2PNetError:
    """Build the exception a caller raises for an error message received from ``peer``.

    An unknown code (from a newer peer) becomes InternalPeerError with the code kept
    in the message, so nothing is lost.
    """
    cls = _WIRE_CODES.get(code)
    if cls is None:
        return InternalPeerError(f"[{code}] {message}", peer=peer)
    return cls(message, peer=peer)
