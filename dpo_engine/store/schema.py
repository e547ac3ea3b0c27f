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


class StoreBase:
    """The connection, the schema upgrade on open, and transactions."""

    path: Path
    conn: sqlite3.Connection

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"{self.path} does not exist",
                             "pass a work dir that a `dpo-engine run` has used")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = None
        try:
            conn = self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                               check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.execute("PRAGMA cache_size = -65536")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()  # nothing else can close it: the caller gets no Store
            raise StoreError(f"{self.path} is not a usable dpo-engine store ({exc})",
                             "point --work-dir at a new folder or pass --restart") from exc

    @classmethod
    def in_work_dir(cls, work_dir: str | Path, *, create: bool = True) -> Self:
        return cls(Path(work_dir) / DB_NAME, create=create)

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(f"{self.path} was written by a newer dpo-engine (schema {version})",
                             "upgrade dpo-engine")
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
