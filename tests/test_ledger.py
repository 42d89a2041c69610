"""The ledger keeps every receipt it acknowledged, through SIGKILL; balances always equal
the sums of the receipts; bad files and contradicting receipts get precise errors; receipt
logs verify, and every kind of damage to one is caught; ``p2pnet ledger``."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.cli import main
from p2pnet.cli.ledger import units_text
from p2pnet.core.identity import Identity
from p2pnet.core.receipts import Receipt, ReceiptChain, sign_acknowledgement, sign_receipt
from p2pnet.errors import LedgerConflictError, LedgerError
from p2pnet.ledger import (
    ChainHead,
    Ledger,
    StoredAcknowledgement,
    StoredReceipt,
    default_ledger_path,
    stored_acknowledgement,
    stored_receipt,
    verify_log,
)
from p2pnet.ledger.store import ZERO_HASH

ME = "12D3KooWMe"
ALICE = "12D3KooWAlice"
BOB = "12D3KooWVictor"
MODEL = "bafkreimodel"
REAL_MODEL = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


def chain(
    provider: str, caller: str, units: list[int], start: int = 1, prev: bytes = ZERO_HASH
) -> list[StoredReceipt]:
    """Receipts of one pair, linked; hashes stand in for the real ones."""
    out = []
    for i, u in enumerate(units):
        seq = start + i
        h = hashlib.sha256(f"{provider}/{caller}/{seq}/{u}".encode()).digest()
        out.append(
            StoredReceipt(provider, caller, MODEL, seq, u, h, prev, 1_000 + seq, b"envelope-" + h)
        )
        prev = h
    return out


def ack_of(receipts: list[StoredReceipt]) -> StoredAcknowledgement:
    last = receipts[-1]
    return StoredAcknowledgement(
        last.caller,
        last.provider,
        last.seq,
        sum(r.units for r in receipts),
        last.receipt_hash,
        b"ack",
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    with Ledger.open(tmp_path / "data" / "ledger.sqlite3", owner=ME, clock=lambda: 5.0) as led:
        yield led


# --- recording and reading -----------------------------------------------------------


def test_receipts_move_balances_in_both_directions(ledger: Ledger) -> None:
    served = chain(ME, ALICE, [1_500_000, 500_000])
    consumed = chain(BOB, ME, [250_000])
    for r in served:
        assert ledger.record_receipt(r, role="provider")
    assert ledger.record_receipt(consumed[0], role="caller")
    assert ledger.balances() == {ALICE: 2_000_000, BOB: -250_000}
    assert ledger.balance(ALICE).served == 2_000_000 and ledger.balance(ALICE).updated_at == 5000
    assert ledger.balance("nobody").balance == 0
    assert ledger.receipts(ALICE) == served
    assert ledger.receipts(role="caller") == consumed
    assert ledger.receipts(BOB, role="provider") == []
    assert ledger.last((ME, ALICE)) == ChainHead(2, served[-1].receipt_hash)
    assert ledger.last((ME, BOB)) == ChainHead(0, ZERO_HASH)
    totals = ledger.totals()
    assert (totals.served_units, totals.consumed_units, totals.peers) == (2_000_000, 250_000, 2)
    assert (totals.receipts_as_provider, totals.receipts_as_caller) == (2, 1)
    assert ledger.audit() == []


def test_the_same_receipt_twice_changes_nothing(ledger: Ledger) -> None:
    (r,) = chain(ME, ALICE, [7])
    assert ledger.record_receipt(r, role="provider")
    assert not ledger.record_receipt(r, role="provider")
    assert ledger.balances() == {ALICE: 7}


def test_another_receipt_in_a_taken_place_is_a_conflict(ledger: Ledger) -> None:
    first = chain(ME, ALICE, [7, 8])
    for r in first:
        ledger.record_receipt(r, role="provider")
    (forked,) = chain(ME, ALICE, [9], start=2, prev=first[0].receipt_hash)
    with pytest.raises(LedgerConflictError, match=r"receipt 2 of provider .* already held"):
        ledger.record_receipt(forked, role="provider")
    (unlinked,) = chain(ME, ALICE, [9], start=3, prev=first[0].receipt_hash)
    with pytest.raises(LedgerConflictError, match=r"links to .* but receipt 2 held"):
        ledger.record_receipt(unlinked, role="provider")
    assert ledger.balances() == {ALICE: 15} and ledger.audit() == []


def test_a_receipt_held_in_one_role_is_a_conflict_in_the_other(tmp_path: Path) -> None:
    (r,) = chain(ME, ALICE, [7])
    with Ledger.open(tmp_path / "ownerless.sqlite3") as led:
        led.record_receipt(r, role="provider")
        with pytest.raises(LedgerConflictError, match="held as provider, not caller"):
            led.record_receipt(r, role="caller")
        assert led.balances() == {ALICE: 7}


def test_a_receipt_of_another_peer_or_with_bad_fields_is_refused(ledger: Ledger) -> None:
    (theirs,) = chain(ALICE, BOB, [1])
    with pytest.raises(LedgerError, match=f"ledger of {ME}, but this receipt's provider"):
        ledger.record_receipt(theirs, role="provider")
    (r,) = chain(ME, ALICE, [1])
    with pytest.raises(LedgerError, match="32 bytes"):
        ledger.record_receipt(
            StoredReceipt(ME, ALICE, MODEL, 1, 1, b"short", ZERO_HASH, 0, b""), role="provider"
        )
    with pytest.raises(LedgerConflictError, match="zero hash"):
        ledger.record_receipt(
            StoredReceipt(ME, ALICE, MODEL, 1, 1, r.receipt_hash, r.receipt_hash, 0, b""),
            role="provider",
        )
    assert ledger.receipts() == []


def test_acknowledgements_are_checked_against_the_receipts(ledger: Ledger) -> None:
    receipts = chain(ME, ALICE, [3, 4, 5])
    for r in receipts:
        ledger.record_receipt(r, role="provider")
    ack = ack_of(receipts[:2])
    assert ledger.record_acknowledgement(ack)
    assert not ledger.record_acknowledgement(ack)
    assert ledger.last_acknowledgement((ME, ALICE)) == ack
    wrong_total = StoredAcknowledgement(ALICE, ME, 3, 11, receipts[2].receipt_hash, b"a")
    with pytest.raises(LedgerConflictError, match=r"acknowledges 11 micro-units.* add up to 12"):
        ledger.record_acknowledgement(wrong_total)
    wrong_hash = StoredAcknowledgement(ALICE, ME, 3, 12, receipts[1].receipt_hash, b"a")
    with pytest.raises(LedgerConflictError, match="names receipt"):
        ledger.record_acknowledgement(wrong_hash)
    with pytest.raises(LedgerConflictError, match="already held with other contents"):
        ledger.record_acknowledgement(
            StoredAcknowledgement(ALICE, ME, 2, 7, ack.last_receipt_hash, b"other")
        )
    assert ledger.acknowledgements() == [ack]


def test_what_was_recorded_is_there_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "ledger.sqlite3"
    receipts = chain(ME, ALICE, [10, 20])
    with Ledger.open(path, owner=ME) as led:
        for r in receipts:
            led.record_receipt(r, role="provider")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with Ledger.open(path, create=False) as led:
        assert led.owner == ME
        assert led.receipts() == receipts and led.balances() == {ALICE: 30}
        assert led.last((ME, ALICE)).seq == 2
    with pytest.raises(LedgerError, match=f"ledger of peer {ME}, not of {BOB}"):
        Ledger.open(path, owner=BOB)


def test_the_default_ledger_is_per_peer_under_xdg_data_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_ledger_path(ME) == tmp_path / "p2pnet" / "ledger" / f"{ME}.sqlite3"


# --- files that are not ledgers ------------------------------------------------------


def test_a_missing_file_is_not_created_when_told_not_to(tmp_path: Path) -> None:
    path = tmp_path / "none.sqlite3"
    with pytest.raises(LedgerError, match=f"no ledger at {path}"):
        Ledger.open(path, create=False)
    assert not path.exists()


def test_random_bytes_are_not_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(LedgerError, match=f"{path} is not a p2pnet ledger: it is not an SQLite"):
        Ledger.open(path)


def test_a_damaged_page_is_reported_not_raised_raw(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with Ledger.open(path) as led:
        for r in chain(ME, ALICE, list(range(400))):
            led.record_receipt(r, role="provider")
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 6] = os.urandom(4096 * 4)  # pages of the receipts' b-tree
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerError, match=str(path)):
        with Ledger.open(path) as led:
            led.receipts()
            led.audit()


def test_another_programs_database_is_not_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE songs (title TEXT)")
    db.close()
    with pytest.raises(LedgerError, match=r"another program.*tables: songs"):
        Ledger.open(path)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger.open(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(LedgerError, match="schema 99, newer than"):
        Ledger.open(path)


def _as_schema_1(path: Path) -> None:
    """Turn a ledger file into what p2pnet wrote before schema 2: no triggers."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER receipt_links")
        db.execute("DROP TRIGGER receipt_moves_balance")
        db.execute("PRAGMA user_version = 1")
    db.close()


def test_a_schema_1_ledger_is_upgraded_and_keeps_its_receipts(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    first, second = chain(ME, ALICE, [10, 20])
    with Ledger.open(path, owner=ME) as old:
        old.record_receipt(first, role="provider")
    _as_schema_1(path)
    with Ledger.open(path, owner=ME) as upgraded:
        assert upgraded.record_receipt(second, role="provider")
        assert upgraded.balance(ALICE).served == 30
        forged = dataclasses.replace(chain(ME, ALICE, [1, 2, 3])[2], prev_hash=bytes(32))
        with pytest.raises(LedgerConflictError, match="links to"):
            upgraded.record_receipt(forged, role="provider")
        assert upgraded.audit() == []
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()


def test_a_schema_2_ledger_without_its_triggers_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger.open(path).close()
    _as_schema_1(path)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 2")
    db.close()
    with pytest.raises(LedgerError, match=r"damaged.*receipt_links, receipt_moves_balance"):
        Ledger.open(path)


def test_a_read_only_directory_is_a_precise_error(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root ignores the mode bits; sysfs refuses it new files
        folder = Path("/sys")
    path = folder / "ledger.sqlite3"
    with pytest.raises(LedgerError, match=f"cannot create the ledger {path}: Permission denied"):
        Ledger.open(path)
    assert not path.exists()


# --- SIGKILL in the middle of a burst --------------------------------------------------

BURST = """
import hashlib, sys
from pathlib import Path
from p2pnet.ledger import Ledger, StoredReceipt
ledger = Ledger.open(Path(sys.argv[1]), owner="me")
heads = {}
for n in range(1, 1_000_000):
    other = f"peer{n % 3}"
    role = "caller" if n % 5 == 0 else "provider"
    pair = ("me", other) if role == "provider" else (other, "me")
    seq, prev = heads.get(pair, (0, bytes(32)))
    h = hashlib.sha256(f"{pair}/{seq + 1}".encode()).digest()
    receipt = StoredReceipt(pair[0], pair[1], "m", seq + 1, n * 7 % 1000, h, prev, n, b"e" + h)
    ledger.record_receipt(receipt, role=role)
    heads[pair] = (seq + 1, h)
    print(pair[0], pair[1], seq + 1, flush=True)
"""


@pytest.mark.slow
def test_no_acknowledged_receipt_is_lost_to_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", BURST, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert child.stdout is not None
    acknowledged = []
    for line in child.stdout:  # each line: a receipt record_receipt has returned
        provider, caller, seq = line.split()
        acknowledged.append((provider, caller, int(seq)))
        if len(acknowledged) == 150:
            child.kill()
            break
    child.wait()
    for line in child.stdout.read().splitlines():  # printed before the kill, not yet read
        provider, caller, seq = line.split()
        acknowledged.append((provider, caller, int(seq)))
    assert child.returncode == -9
    with Ledger.open(path, create=False) as led:
        held = {(r.provider, r.caller, r.seq): r for r in led.receipts()}
        assert set(acknowledged) <= held.keys()
        assert len(held) - len(acknowledged) <= 1  # at most one committed, not yet printed
        assert led.audit() == []
        sums: dict[str, int] = {}
        for r in held.values():
            other, sign = (r.caller, 1) if r.provider == "me" else (r.provider, -1)
            sums[other] = sums.get(other, 0) + sign * r.units
        assert led.balances() == sums
        for pair in {(p, c) for p, c, _ in held}:  # every chain whole and linked
            of_pair = sorted((r for r in held.values() if r.pair == pair), key=lambda r: r.seq)
            assert [r.seq for r in of_pair] == list(range(1, len(of_pair) + 1))
            hashes = [ZERO_HASH] + [r.receipt_hash for r in of_pair]
            assert [r.prev_hash for r in of_pair] == hashes[:-1]


# --- receipt logs ----------------------------------------------------------------------


def exported(ledger: Ledger, peer: str | None = None) -> list[str]:
    fh = io.StringIO()
    ledger.export(peer, fh)
    return fh.getvalue().splitlines(keepends=True)


def verify_lines(lines: list[str], **checks: object) -> object:
    return verify_log(io.StringIO("".join(lines)), name="log.jsonl", **checks)  # type: ignore[arg-type]


@pytest.fixture
def full_ledger(ledger: Ledger) -> Ledger:
    alice = chain(ME, ALICE, [3, 4, 5])
    for r in alice:
        ledger.record_receipt(r, role="provider")
    ledger.record_acknowledgement(ack_of(alice[:2]))
    for r in chain(BOB, ME, [6, 7]):
        ledger.record_receipt(r, role="caller")
    return ledger


def test_an_exported_log_verifies(full_ledger: Ledger) -> None:
    summary = verify_lines(exported(full_ledger))
    assert (summary.pairs, summary.receipts, summary.acknowledgements, summary.units) == (
        2,
        5,
        1,
        25,
    )
    assert summary.units_by_pair == {(ME, ALICE): 12, (BOB, ME): 13}
    assert not summary.signatures_checked
    assert verify_lines(exported(full_ledger, ALICE)).receipts == 3


def test_an_injected_signature_check_sees_every_envelope(full_ledger: Ledger) -> None:
    by_envelope = {r.envelope: r for r in full_ledger.receipts()}
    seen = []

    def check(envelope: bytes) -> StoredReceipt:
        seen.append(envelope)
        return by_envelope[envelope]

    assert verify_lines(exported(full_ledger), check_receipt=check).signatures_checked
    assert sorted(seen) == sorted(by_envelope)

    def lying(envelope: bytes) -> StoredReceipt:
        r = by_envelope[envelope]
        return StoredReceipt(
            r.provider,
            r.caller,
            r.model_id,
            r.seq,
            r.units + 1,
            r.receipt_hash,
            r.prev_hash,
            r.issued_at,
            r.envelope,
        )

    with pytest.raises(LedgerError, match="line 2: the fields on the line differ"):
        verify_lines(exported(full_ledger), check_receipt=lying)

    def forged(envelope: bytes) -> StoredReceipt:
        raise LedgerError("bad signature")

    with pytest.raises(LedgerError, match="line 2: the envelope does not verify: bad signature"):
        verify_lines(exported(full_ledger), check_receipt=forged)


def edit(line: str, **fields: object) -> str:
    return json.dumps(json.loads(line) | fields) + "\n"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda ls: ls[:-1], "no end line after line 7: the log is cut short"),
        (
            lambda ls: ls[:2] + ls[4:],
            "line 3: receipt 3 .* follows receipt 1: receipts are missing",
        ),
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "line 2: receipt 2 .* follows receipt 0"),
        (lambda ls: [*ls[:2], ls[1], *ls[2:]], "line 3: receipt 1 .* repeated or out of order"),
        (
            lambda ls: [ls[0], edit(ls[1], units=99), *ls[2:]],
            "line 4: acknowledgement of receipt 2 states 7 micro-units; .* add up to 103",
        ),
        (
            lambda ls: [ls[0], edit(ls[1], receipt_hash="ab" * 32), *ls[2:]],
            "line 3: receipt 2 links to .* broken chain",
        ),
        (lambda ls: [ls[0], ls[1], ls[3], ls[2], *ls[4:]], "line 3: acknowledgement of receipt 2"),
        (lambda ls: [*ls[:-1], edit(ls[-1], units=1)], "line 8: the end line states"),
        (lambda ls: [*ls, ls[-1]], "line 9: a line after the end line"),
        (lambda ls: [ls[0], "{not json\n", *ls[1:]], "line 2: not JSON"),
        (lambda ls: [ls[0], "[" * 60_000 + "\n", *ls[1:]], "line 2: not JSON"),
        (lambda ls: [ls[0], edit(ls[1], seq=True), *ls[2:]], "line 2: seq must be an integer"),
        (lambda ls: [ls[0], edit(ls[1], prev_hash="zz"), *ls[2:]], "line 2: prev_hash is not hex"),
        (
            lambda ls: [ls[0], edit(ls[1], envelope="00" * 20_000), *ls[2:]],
            "line 2: envelope must be hex of at most 16384 bytes",
        ),
        (lambda ls: [ls[0], " " * 70_000 + "\n", *ls[1:]], "line 2: longer than 65536"),
        (lambda ls: ls[1:], "line 1: not a p2pnet receipt log of version 1"),
        (lambda ls: [], "log.jsonl: empty, not a receipt log"),
    ],
)
def test_damage_to_a_log_is_named(full_ledger: Ledger, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    lines = exported(full_ledger)
    assert [json.loads(line).get("type") for line in lines] == [
        None,
        "receipt",
        "receipt",
        "acknowledgement",
        "receipt",
        "receipt",
        "receipt",
        "end",
    ]
    with pytest.raises(LedgerError, match=message):
        verify_lines(damage(lines))


VALID_LOG = [
    '{"p2pnet_receipt_log":1,"peer":null,"exported_at":0}\n',
    '{"type":"receipt","provider":"p","caller":"c","model_id":"m","seq":1,"units":2,'
    f'"receipt_hash":"{"11" * 32}","prev_hash":"{"00" * 32}","issued_at":0,"envelope":"ab"}}\n',
    '{"type":"end","receipts":1,"acknowledgements":0,"units":2}\n',
]


def test_the_hand_written_log_verifies() -> None:
    assert verify_lines(VALID_LOG).units == 2  # so that the fuzzing below starts from valid


@settings(max_examples=200, deadline=None)
@given(
    junk=st.text(max_size=300),
    cut=st.integers(min_value=0, max_value=400),
)
def test_any_damage_to_a_log_is_a_ledger_error(junk: str, cut: int) -> None:
    text = "".join(VALID_LOG)
    damaged = text[: min(cut, len(text))] + junk + text[min(cut, len(text)) :]
    try:
        verify_log(io.StringIO(damaged), name="log.jsonl")
    except LedgerError:
        pass  # anything else (TypeError, KeyError, ...) fails the test


# --- p2pnet ledger ---------------------------------------------------------------------


def test_units_are_shown_exactly() -> None:
    assert units_text(1_500_000) == "1.500000"
    assert units_text(-1) == "-0.000001"
    assert units_text(12_345_000_000) == "12,345.000000"


def test_the_ledger_command_shows_balances_and_receipts(
    full_ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(full_ledger.path)
    assert main(["ledger", "--ledger", path, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {b["peer"]: b["balance_units"] for b in shown["balances"]} == {ALICE: 12, BOB: -13}
    assert shown["totals"]["receipts_as_caller"] == 2
    assert main(["ledger", "--ledger", path]) == 0
    text = capsys.readouterr().out
    assert ALICE in text and "0.000012" in text and "2 peers" in text
    assert main(["ledger", "--ledger", path, "--json", "receipts", "--peer", BOB]) == 0
    assert [r["seq"] for r in json.loads(capsys.readouterr().out)] == [1, 2]
    assert (
        main(
            ["ledger", "receipts", "--ledger", path, "--peer", ALICE, "--role", "caller", "--json"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == []


def test_peer_text_in_the_ledger_is_escaped(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    (r,) = chain(ME, "evil\x1b[31m[bold]", [1])
    ledger.record_receipt(r, role="provider")
    assert main(["ledger", "--ledger", str(ledger.path)]) == 0
    assert "evil\\x1b[31m[bold]" in capsys.readouterr().out


def signed_chain(
    provider: Identity, caller: Identity, units: list[int]
) -> tuple[list[StoredReceipt], StoredAcknowledgement]:
    """Receipts of one pair as a provider signs them, and the caller's acknowledgement."""
    pair = ReceiptChain(provider.peer_id, caller.peer_id)
    stored = []
    for u in units:
        seq, prev = pair.next_receipt_fields()
        receipt = Receipt(
            provider=provider.peer_id,
            caller=caller.peer_id,
            model_id=REAL_MODEL,
            record_hash=b"\x01" * 32,
            request_hash=b"\x02" * 32,
            result_hash=b"\x03" * 32,
            runtime="onnxruntime 1.20.1",
            units=u,
            seq=seq,
            prev_hash=prev,
            issued_at=1_000 + seq,
        )
        stored.append(stored_receipt(sign_receipt(receipt, provider.signing_key)))
        pair = pair.check_next(receipt)
    ack = stored_acknowledgement(sign_acknowledgement(pair.acknowledgement(), caller.signing_key))
    return stored, ack


def test_export_then_verify_signed_receipts_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provider, caller = Identity.from_seed(b"p" * 32), Identity.from_seed(b"c" * 32)
    receipts, ack = signed_chain(provider, caller, [1_001, 2_002, 3_003])
    with Ledger.open(tmp_path / "ledger.sqlite3", owner=provider.peer_id) as led:
        for r in receipts:
            led.record_receipt(r, role="provider")
        led.record_acknowledgement(ack)
        path = led.path
    log = tmp_path / "log.jsonl"
    assert main(["ledger", "export", "--ledger", str(path), "--out", str(log)]) == 0
    assert main(["ledger", "verify", str(log)]) == 0
    assert "valid: 3 receipts in 1 chains" in capsys.readouterr().out
    assert main(["ledger", "verify", str(log), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signatures_checked"] is True

    # One bit of one signature flipped: the receipt is forged.
    lines = log.read_text().splitlines(keepends=True)
    entry = json.loads(lines[2])
    envelope = bytearray(bytes.fromhex(entry["envelope"]))
    envelope[-1] ^= 1
    lines[2] = json.dumps(entry | {"envelope": envelope.hex()}) + "\n"
    log.write_text("".join(lines))
    assert main(["ledger", "verify", str(log)]) == 1
    assert "does not verify" in capsys.readouterr().err

    log.write_text("".join(lines[:2]))  # cut short
    assert main(["ledger", "verify", str(log)]) == 1
    assert "cut short" in capsys.readouterr().err


def test_no_ledger_yet_is_said_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert main(["ledger", "--identity", str(tmp_path / "none.key")]) == 2
    assert "no identity at" in capsys.readouterr().err
    assert main(["ledger", "--ledger", str(tmp_path / "none.sqlite3"), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["balances"] == [] and "no ledger yet" in captured.err


def test_a_corrupt_ledger_is_an_error_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"\x00garbage" * 1000)
    assert main(["ledger", "--ledger", str(path)]) == 2
    assert "is not a p2pnet ledger" in capsys.readouterr().err


@pytest.mark.slow  # a Python process
def test_the_ledger_benchmark_writes_both_modes(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "scripts/bench/ledger.py", "--receipts", "50", "--dir", str(tmp_path),
         "--out", str(tmp_path)],
        cwd=repo, capture_output=True, text=True, timeout=300,
        env=os.environ | {"PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "ledger.json").read_text())["rows"]
    assert [row["synchronous"] for row in rows] == ["FULL", "NORMAL"]
    assert all(0 < row["p50_ms"] <= row["p95_ms"] <= row["max_ms"] for row in rows)
