"""The SQLite files p2pnet keeps (the ledger, the trust store): how each is created,
recognised and reported on, in one place.

A kind of file (``FileKind``) has a noun for messages, the error it raises, an
``application_id`` (tells our file from another program's database), a schema version
(``user_version``) and the tables it must hold. Every function here names the file and
says what is wrong and what to do, in the kind's words: a file that is not SQLite, is
another program's, has a newer schema, is damaged, or cannot be written.
``connect`` opens one (creating it 0600 if asked) and has it checked; ``SqliteStore`` is
what the classes of these files share: a connection behind a lock, transactions, errors.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final, Self

from p2pnet.errors import P2PNetError

__all__ = [
    "FileKind",
    "SqliteStore",
    "check_file",
    "create_file",
    "create_schema",
    "sqlite_errors",
    "unwritable",
    "use_wal",
]


@dataclass(frozen=True, slots=True)
class FileKind:
    """One kind of p2pnet SQLite file.

    noun: what it is called in messages ("ledger", "trust store").
    error: the error raised about it (a P2PNetError taking a message).
    application_id, schema_version: its PRAGMA application_id and user_version.
    tables: the tables a file of it holds.
    start_anew: what moving a bad file away gives, for messages ("a new ledger").
    """

    noun: str
    error: Callable[[str], P2PNetError]
    application_id: int
    schema_version: int
    tables: tuple[str, ...]
    start_anew: str


# Longest wait for another process's write lock before a statement fails.
BUSY_TIMEOUT_S: Final = 10.0


class SqliteStore:
    """What a p2pnet SQLite file's class shares: one connection behind a lock (safe to
    call from several threads), SQLite's errors as the kind's error naming the file, and
    closing. Subclasses open with ``connect`` and check the file before ``__init__``."""

    kind: ClassVar[FileKind]

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, alone, for reads or a single (autocommitted) statement."""
        with self._lock, sqlite_errors(self.path, self.kind):
            yield self._db

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction (the write lock taken at once, so no reader-turned-
        writer deadlock), committed on leaving, rolled back on any exception."""
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


def connect(
    path: Path,
    kind: FileKind,
    *,
    create: bool,
    absent: str,
    prepare: Callable[[sqlite3.Connection], None],
) -> sqlite3.Connection:
    """A connection to the ``kind`` file at ``path`` (autocommit, usable from any
    thread), creating the file (``create_file``) if ``create`` and it does not exist,
    and ``prepare``d (checked, its schema created or upgraded); closed if that fails.

    Raises:
        kind.error: no file and not ``create`` (the message ends with ``absent``), or
            one that cannot be created or opened, or what ``prepare`` raises.
    """
    if not path.exists():
        if not create:
            raise kind.error(f"no {kind.noun} at {path}: {absent}")
        create_file(path, kind)
    try:
        db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise kind.error(f"cannot open the {kind.noun} {path}: {exc}") from None
    try:
        prepare(db)
    except BaseException:
        db.close()
        raise
    return db


def create_file(path: Path, kind: FileKind) -> None:
    """An empty file, mode 0600, in a directory created 0700: SQLite then opens it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except FileExistsError:
        pass  # another process created it first: use theirs
    except OSError as exc:
        raise kind.error(
            f"cannot create the {kind.noun} {path}: {exc.strerror or exc} (check that "
            f"{path.parent} is a directory this user can write)"
        ) from None


def check_file(path: Path, db: sqlite3.Connection, kind: FileKind) -> int | None:
    """The schema version of the ``kind`` file open as ``db``; None if it is empty (a
    new file, to create the schema in).

    Raises:
        kind.error: not an SQLite database, another program's, a newer schema, or
            damaged (an older schema than 1, or tables missing).
    """
    with sqlite_errors(path, kind):
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        except sqlite3.DatabaseError as exc:
            raise kind.error(
                f"{path} is not a p2pnet {kind.noun}: it is not an SQLite database ({exc}); "
                f"move it away to start {kind.start_anew}"
            ) from None
    found = ", ".join(sorted(tables)) or "none"
    if app_id == 0 and version == 0 and not tables:
        return None
    if app_id != kind.application_id:
        raise kind.error(
            f"{path} is an SQLite database of another program, not a p2pnet {kind.noun} "
            f"(application_id {app_id:#x}, tables: {found}); give another file"
        )
    if version > kind.schema_version:
        raise kind.error(
            f"{path} is a {kind.noun} of schema {version}, newer than this p2pnet reads "
            f"({kind.schema_version}); upgrade p2pnet"
        )
    if version < 1 or not set(kind.tables) <= tables:
        raise kind.error(
            f"{path} is a damaged p2pnet {kind.noun}: schema {version}, tables {found}"
        )
    return int(version)


def create_schema(
    path: Path,
    db: sqlite3.Connection,
    kind: FileKind,
    statements: Iterable[str],
    meta: Mapping[str, str],
) -> None:
    """Create a new file's schema in one transaction: ``statements``, then ``meta`` rows
    (key, value) in its ``meta`` table, its application_id and schema version. Another
    process that created it first wins."""
    try:
        db.execute("BEGIN IMMEDIATE")
        for statement in statements:
            db.execute(statement)
        for key, value in meta.items():
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
        db.execute(f"PRAGMA application_id = {kind.application_id}")
        db.execute(f"PRAGMA user_version = {kind.schema_version}")
        db.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if "already exists" in str(exc):
            return  # another process created the schema first
        raise kind.error(unwritable(path, exc, kind)) from None


def use_wal(path: Path, db: sqlite3.Connection, kind: FileKind, synchronous: str) -> None:
    """Put the file in write-ahead-log mode with ``synchronous`` ("FULL" or "NORMAL").

    Raises:
        kind.error: the file or its directory cannot be written, or WAL is refused.
    """
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    except sqlite3.OperationalError as exc:
        raise kind.error(unwritable(path, exc, kind)) from None
    if mode != "wal":
        raise kind.error(f"{path}: cannot use write-ahead logging (journal mode {mode})")
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
    db.execute(f"PRAGMA synchronous = {synchronous}")


def unwritable(path: Path, exc: sqlite3.Error, kind: FileKind) -> str:
    """The message for a file SQLite cannot write."""
    return (
        f"cannot write the {kind.noun} {path}: {exc} (the file and its directory "
        f"{path.parent} must be writable: the write-ahead log {path.name}-wal is created "
        "beside it)"
    )


@contextmanager
def sqlite_errors(path: Path, kind: FileKind) -> Iterator[None]:
    """SQLite's errors as ``kind.error`` naming the file: corruption found mid-way, a
    full disk, a lost write lock, a value a constraint refuses."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise kind.error(f"{path}: a value the {kind.noun} does not accept: {exc}") from None
    except sqlite3.OperationalError as exc:
        if "readonly" in str(exc) or "unable to open" in str(exc):
            raise kind.error(unwritable(path, exc, kind)) from None
        raise kind.error(f"{path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise kind.error(
            f"{path} is damaged ({exc}); move it away to start {kind.start_anew}"
        ) from None
