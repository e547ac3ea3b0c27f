"""The store's file: its schema, how it is opened, and its transactions.

``StoreBase`` owns the one ``sqlite3`` connection (WAL; autocommit mode, so every transaction
is an explicit ``BEGIN IMMEDIATE`` ... ``COMMIT``) and upgrades the schema on open. The read,
write and live-view parts of ``Store`` build on it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from ..errors import StoreError

DB_NAME = "engine.db"

# Each entry upgrades the schema by one version; PRAGMA user_version says how many ran.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE run (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pipeline TEXT, dataset TEXT, settings TEXT, stage_hashes TEXT,
        extra_columns TEXT, versions TEXT, created REAL, updated REAL
    );
    CREATE TABLE record (
        rid INTEGER PRIMARY KEY,
        idx TEXT, idx_value TEXT, question TEXT, image BLOB, image_path TEXT,
        extra TEXT, valid INTEGER NOT NULL, error TEXT, source TEXT, row_hash TEXT NOT NULL
    );
    CREATE UNIQUE INDEX record_valid_idx ON record(idx) WHERE valid = 1;
    CREATE TABLE stage_state (
        stage TEXT NOT NULL, rid INTEGER NOT NULL, status TEXT NOT NULL,
        settings_hash TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
        finished REAL, seconds REAL,
        PRIMARY KEY (stage, rid)
    ) WITHOUT ROWID;
    CREATE TABLE sample (
        rid INTEGER NOT NULL, inner_idx INTEGER NOT NULL, text TEXT NOT NULL,
        n_tokens INTEGER NOT NULL, n_words INTEGER NOT NULL, text_hash INTEGER NOT NULL,
        PRIMARY KEY (rid, inner_idx)
    );
    CREATE TABLE logprob (
        role TEXT NOT NULL, rid INTEGER NOT NULL, inner_idx INTEGER NOT NULL,
        n_tokens INTEGER NOT NULL, sum REAL NOT NULL, avg REAL NOT NULL, per_token BLOB,
        PRIMARY KEY (role, rid, inner_idx)
    );
    CREATE TABLE reward (
        rid INTEGER NOT NULL, inner_idx INTEGER NOT NULL,
        sum REAL NOT NULL, avg REAL NOT NULL, min REAL, last REAL,
        PRIMARY KEY (rid, inner_idx)
    );
    CREATE TABLE pair (
        rid INTEGER NOT NULL, ord INTEGER NOT NULL, chosen INTEGER NOT NULL,
        rejected INTEGER NOT NULL,
        PRIMARY KEY (rid, ord)
    );
    CREATE TABLE kept_pair (
        position INTEGER PRIMARY KEY, rid INTEGER NOT NULL, ord INTEGER NOT NULL
    );
    CREATE TABLE metric (
        id INTEGER PRIMARY KEY, ts REAL NOT NULL, stage TEXT NOT NULL,
        items INTEGER NOT NULL, tokens INTEGER NOT NULL, seconds REAL NOT NULL
    );
    CREATE TABLE control (
        id INTEGER PRIMARY KEY, ts REAL NOT NULL, action TEXT NOT NULL, handled REAL
    );
    """,
    # 2: divide_and_conquer. Facts, check questions and judgments are keyed by
    # (rid, inner_idx, ord); a note says why an answer got nothing (e.g. an unparseable split).
    """
    CREATE TABLE fact (
        rid INTEGER NOT NULL, inner_idx INTEGER NOT NULL, ord INTEGER NOT NULL, text TEXT NOT NULL,
        PRIMARY KEY (rid, inner_idx, ord)
    );
    CREATE TABLE check_question (
        rid INTEGER NOT NULL, inner_idx INTEGER NOT NULL, ord INTEGER NOT NULL, text TEXT NOT NULL,
        PRIMARY KEY (rid, inner_idx, ord)
    );
    CREATE TABLE judgment (
        rid INTEGER NOT NULL, inner_idx INTEGER NOT NULL, ord INTEGER NOT NULL,
        p_yes REAL NOT NULL, p_no REAL NOT NULL,
        PRIMARY KEY (rid, inner_idx, ord)
    );
    CREATE TABLE score (
        rid INTEGER NOT NULL, inner_idx INTEGER NOT NULL, score INTEGER NOT NULL,
        n_claims INTEGER NOT NULL,
        PRIMARY KEY (rid, inner_idx)
    );
    CREATE TABLE note (
        stage TEXT NOT NULL, rid INTEGER NOT NULL, inner_idx INTEGER NOT NULL, reason TEXT NOT NULL,
        PRIMARY KEY (stage, rid, inner_idx)
    );
    """,
    # 3: the live view. The running process says who and where it is and beats a heartbeat;
    # a sampler records the devices' load over time, so a dashboard opened later sees it.
    """
    CREATE TABLE process (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER, host TEXT, started REAL, heartbeat REAL, finished REAL, state TEXT,
        models TEXT
    );
    CREATE TABLE device_sample (
        id INTEGER PRIMARY KEY, ts REAL NOT NULL, device TEXT NOT NULL, util REAL,
        mem_used REAL, mem_total REAL
    );
    CREATE INDEX metric_ts ON metric(ts);
    """,
    # 4: several processes on one work dir. A lease says which process holds a record of a
    # stage until when; the holders renew them while alive. Each process lists its workers.
    # ``complete_hash`` is the settings hash of the last run that finished every stage.
    """
    CREATE TABLE lease (
        stage TEXT NOT NULL, rid INTEGER NOT NULL, holder TEXT NOT NULL, expires REAL NOT NULL,
        PRIMARY KEY (stage, rid)
    ) WITHOUT ROWID;
    CREATE INDEX lease_holder ON lease(holder);
    CREATE TABLE worker (
        id TEXT NOT NULL, holder TEXT NOT NULL, host TEXT, pid INTEGER, device TEXT,
        state TEXT, stage TEXT, started REAL, heartbeat REAL, items INTEGER NOT NULL DEFAULT 0,
        busy REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (holder, id)
    );
    ALTER TABLE run ADD COLUMN complete_hash TEXT;
    """,
    # 5: crash quarantine. How often a process died (kill -9, the OOM killer, a crash in native
    # code) while it held a record of a stage; such records are retried one at a time, and one
    # in flight at two deaths is set aside (stage_state status 'quarantined') until `retry`.
    """
    CREATE TABLE death (
        stage TEXT NOT NULL, rid INTEGER NOT NULL, deaths INTEGER NOT NULL, last REAL NOT NULL,
        holder TEXT, PRIMARY KEY (stage, rid)
    ) WITHOUT ROWID;
    """,
    # 6: images stay in the dataset. A record says where its image lies and the hash of its
    # bytes (dpo_engine.images); ``image`` holds the bytes only with --copy-images, or in
    # stores written before this version.
    """
    ALTER TABLE record ADD COLUMN image_file TEXT;
    ALTER TABLE record ADD COLUMN image_pos INTEGER;
    ALTER TABLE record ADD COLUMN image_hash TEXT;
    """,
]

# Which table each kind of output lands in, and the (column, value) that scopes it to its
# writer where several stages share a table (logprob by role, note by stage).
OUTPUT_TABLES: dict[str, tuple[str, tuple[str, str] | None]] = {
    "samples": ("sample", None),
    "logprob:instruct": ("logprob", ("role", "instruct")),
    "logprob:reward": ("logprob", ("role", "reward")),
    "rewards": ("reward", None),
    "pairs": ("pair", None),
    "facts": ("fact", None),
    "questions": ("check_question", None),
    "judgments": ("judgment", None),
    "scores": ("score", None),
    "notes:split": ("note", ("stage", "split")),
    "notes:questions": ("note", ("stage", "questions")),
    "notes:score": ("note", ("stage", "score")),
}


def _connect(target: str, uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(target, timeout=60, isolation_level=None, check_same_thread=False, uri=uri)
    conn.execute("PRAGMA busy_timeout = 60000")
    return conn


def _open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection: ``mode=ro`` (sees a live run's writes), or, where SQLite cannot
    create the WAL's shared-memory file (a read-only mount), ``immutable=1``, which reads the
    file as it is (a run that was killed there shows as of its last checkpoint)."""
    from urllib.parse import quote

    base = "file:" + quote(str(path.absolute()))
    conn = _connect(base + "?mode=ro", uri=True)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()  # no shared-memory file possible here: read the file as it is
    except BaseException:
        conn.close()
        raise
    return _connect(base + "?immutable=1", uri=True)


class StoreBase:
    """The connection, the schema upgrade on open, and transactions."""

    path: Path
    conn: sqlite3.Connection
    _images = None  # the ImageReader, made when a read first needs an image

    def __init__(self, path: str | Path, *, create: bool = True, readonly: bool = False, check: bool = False):
        """Open (``create``: or make) the store at ``path``. ``readonly``: for the commands that
        only read (status, export, the dashboard), which then work on a read-only mount too.
        ``check``: when the store was not closed cleanly (its write-ahead log is still there:
        a crash, or a run that is live), run SQLite's ``quick_check`` first and refuse a damaged
        file. Not on every open: it reads every page."""
        self.path = Path(path)
        unclean = Path(f"{self.path}-wal").exists()
        self.readonly = readonly
        if not (create and not readonly) and not self.path.is_file():
            raise StoreError(f"{self.path} does not exist",
                             "pass a work dir that a `dpo-engine run` has used")
        if not readonly:
            self._refuse_read_only_folder()
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = None
        try:
            self.conn = _open_readonly(self.path) if readonly else _connect(str(self.path))
            self.conn.execute("PRAGMA cache_size = -65536")
            if check and unclean:
                self._check_integrity()
            if readonly:
                self._check_version()
            else:
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = NORMAL")
                self._migrate()
        except BaseException as exc:
            if self.conn is not None:
                self.conn.close()  # nothing else can close it: the caller gets no Store
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreError(f"{self.path} is not a usable dpo-engine store ({exc})",
                                 "point --work-dir at a new folder or pass --restart") from exc
            raise

    def _refuse_read_only_folder(self) -> None:
        import os

        folder = self.path.parent if self.path.parent.exists() else None
        if folder is not None and not (os.access(folder, os.W_OK) and
                                       (not self.path.exists() or os.access(self.path, os.W_OK))):
            raise StoreError(f"{folder} is read-only: a run cannot write its store there",
                             "copy the work dir to a writable place and run there; `status`, `export` "
                             "and `dashboard` read it where it is")

    def _check_integrity(self) -> None:
        problems = [row[0] for row in self.conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StoreError(f"{self.path} is damaged (SQLite quick_check: {'; '.join(problems)})",
                             "start the run over with --restart, or copy out what is still readable with "
                             "`sqlite3 engine.db .recover`")

    def _check_version(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(f"{self.path} was written by a newer dpo-engine (schema {version})",
                             "upgrade dpo-engine")
        if version < len(MIGRATIONS):
            raise StoreError(f"{self.path} was written by an older dpo-engine (schema {version}) and is "
                             "opened read-only, so it cannot be upgraded",
                             "run any dpo-engine command on it once where it can be written")

    @classmethod
    def in_work_dir(cls, work_dir: str | Path, *, create: bool = True, readonly: bool = False,
                    check: bool = False) -> Self:
        return cls(Path(work_dir) / DB_NAME, create=create, readonly=readonly, check=check)

    def close(self) -> None:
        self.conn.close()
        if self._images is not None:
            self._images.close()
            self._images = None

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            self._check_version()
        for number in range(version, len(MIGRATIONS)):
            with self.transaction():
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {number + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
