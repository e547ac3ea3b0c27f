"""The run store: ``WORK_DIR/engine.db``. The only module that speaks SQL.

SQLite in WAL mode, opened through sqlite-utils. Every input record is a row of ``record``;
each record's progress through each stage is a row of ``stage_state`` (status, the settings
hash it was computed under, attempts, error, timings); each kind of result has its own table.
A batch's outputs and its records' new state commit in one transaction, so a crash loses at
most the batch in flight. Readers (``status``, the dashboard) use their own connections and
never block the writer.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..dataset import encode_extra
from ..errors import StoreError
from ..stage import (Batch, FactRow, JudgmentRow, LogprobRow, Outputs, QuestionRow, RecordIn, RewardRow,
                    SampleRow, ScoreRow)



def _import_sqlite_utils():
    """Import sqlite-utils without letting it import pandas and numpy.

    sqlite-utils imports both eagerly, when installed, only to map their scalar types; that
    costs over half a second, and ``status`` and the dashboard must start fast. We never hand
    it pandas or numpy values, so they are hidden while it loads and available again after.
    """
    import sys

    hidden = [name for name in ("pandas", "numpy") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # makes ``import name`` raise ImportError
    try:
        import sqlite_utils
    finally:
        for name in hidden:
            sys.modules.pop(name, None)
    return sqlite_utils


sqlite_utils = _import_sqlite_utils()

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

# The per-answer tables a batch read can ask for: Batch field -> (table, row type, columns).
_ANSWER_READS = {
    "samples": ("sample", SampleRow, "rid, inner_idx, text, n_tokens, n_words, text_hash"),
    "rewards": ("reward", RewardRow, "rid, inner_idx, sum, avg, min, last"),
    "facts": ("fact", FactRow, "rid, inner_idx, ord, text"),
    "questions": ("check_question", QuestionRow, "rid, inner_idx, ord, text"),
    "judgments": ("judgment", JudgmentRow, "rid, inner_idx, ord, p_yes, p_no"),
    "scores": ("score", ScoreRow, "rid, inner_idx, score, n_claims"),
}


@dataclass(frozen=True)
class RecordCounts:
    total: int
    valid: int
    invalid: int


@dataclass(frozen=True)
class StageCounts:
    name: str
    done: int
    pending: int
    failed: int
    items_per_s: float | None
    tokens_per_s: float | None
    notes: dict[str, int] = field(default_factory=dict)  # answers left without output, by reason


@dataclass(frozen=True)
class StatusSnapshot:
    pipeline: str | None
    records: RecordCounts
    stages: list[StageCounts]


@dataclass(frozen=True)
class InvalidRecord:
    rid: int
    idx: str | None
    error: str
    source: str


CONTROL_ACTIONS = ("pause", "resume", "retry")


@dataclass(frozen=True)
class ProcessInfo:
    pid: int | None
    host: str | None
    started: float | None
    heartbeat: float | None
    finished: float | None
    state: str | None  # running, paused, finished, failed (as the process last wrote it)
    models: dict


@dataclass(frozen=True)
class DeviceSample:
    ts: float
    device: str
    util: float | None  # percent
    mem_used: float | None  # bytes
    mem_total: float | None


@dataclass(frozen=True)
class MetricRow:
    ts: float
    stage: str
    items: int
    tokens: int
    seconds: float


@dataclass(frozen=True)
class Failure:
    stage: str
    rid: int
    idx: str | None
    error: str | None
    attempts: int
    finished: float | None


@dataclass(frozen=True)
class AnswerDetail:
    inner_idx: int
    text: str
    reward: tuple[float, float] | None  # (sum, avg), dpo_reward
    score: int | None  # divide_and_conquer
    claims: tuple[tuple, ...]  # (fact, question, p_yes, p_no)


@dataclass(frozen=True)
class RecordDetail:
    rid: int
    idx: str | None
    question: str | None
    image: bytes | None
    valid: bool
    error: str | None
    answers: list[AnswerDetail]
    pairs: list[tuple[int, int, bool]]  # (chosen, rejected, kept in the output)


@dataclass(frozen=True)
class RunInfo:
    pipeline: str
    dataset: str
    settings: dict
    stage_hashes: dict[str, str]
    extra_columns: list[str]


class Store:
    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"{self.path} does not exist",
                             "pass a work dir that a `dpo-engine run` has used")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                   check_same_thread=False)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.execute("PRAGMA busy_timeout = 60000")
            self.db.execute("PRAGMA cache_size = -65536")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable dpo-engine store ({exc})",
                             "point --work-dir at a new folder or pass --restart") from exc

    @classmethod
    def in_work_dir(cls, work_dir: str | Path, *, create: bool = True) -> Store:
        return cls(Path(work_dir) / DB_NAME, create=create)

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
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

    # ------------------------------------------------------------------ run
    def save_run(self, pipeline: str, dataset: str, settings: dict, stage_hashes: dict[str, str],
                 versions: dict[str, str]) -> None:
        now = time.time()
        with self.transaction() as c:
            c.execute(
                "INSERT INTO run (id, pipeline, dataset, settings, stage_hashes, versions, created, updated)"
                " VALUES (1, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                " pipeline=excluded.pipeline, dataset=excluded.dataset, settings=excluded.settings,"
                " stage_hashes=excluded.stage_hashes, versions=excluded.versions, updated=excluded.updated",
                (pipeline, dataset, json.dumps(settings), json.dumps(stage_hashes),
                 json.dumps(versions), now, now),
            )

    def run_info(self) -> RunInfo | None:
        row = self.conn.execute(
            "SELECT pipeline, dataset, settings, stage_hashes, extra_columns FROM run WHERE id = 1"
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return RunInfo(row[0], row[1], json.loads(row[2] or "{}"), json.loads(row[3] or "{}"),
                       json.loads(row[4] or "[]"))

    def note_extra_columns(self, names: Iterable[str]) -> None:
        """Remember carried column names in first-seen order (for the output's columns)."""
        row = self.conn.execute("SELECT extra_columns FROM run WHERE id = 1").fetchone()
        known = json.loads(row[0]) if row and row[0] else []
        added = [n for n in names if n not in known]
        if added:
            with self.transaction() as c:
                c.execute("INSERT INTO run (id, extra_columns) VALUES (1, ?) ON CONFLICT(id)"
                          " DO UPDATE SET extra_columns = excluded.extra_columns",
                          (json.dumps(known + added),))

    # ------------------------------------------------------------------ records
    def record_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM record").fetchone()[0]

    def iter_row_hashes(self) -> Iterator[tuple[int, str]]:
        yield from self.conn.execute("SELECT rid, row_hash FROM record ORDER BY rid")

    def insert_records(self, records: list) -> int:
        """Insert ``RawRecord``s; a valid row whose idx is already taken becomes invalid.

        Returns how many of them are invalid."""
        taken: dict[str, int] = {}
        names = [r.idx for r in records if r.error is None and r.idx is not None]
        if names:
            for idx, rid in self.conn.execute(
                "SELECT idx, rid FROM record WHERE valid = 1 AND idx IN (SELECT value FROM json_each(?))",
                (json.dumps(names),),
            ):
                taken[idx] = rid
        rows = []
        invalid = 0
        for r in records:
            error = r.error
            if error is None:
                first = taken.get(r.idx)
                if first is not None:
                    error = f"duplicate idx {r.idx!r} (first at row {first})"
                else:
                    taken[r.idx] = r.row
            if error is not None:
                invalid += 1
            rows.append((r.row, r.idx, json.dumps(r.idx_value, default=str), r.question,
                         r.image if error is None else None, r.image_path, encode_extra(r.extra),
                         int(error is None), error, r.source, r.row_hash))
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO record (rid, idx, idx_value, question, image, image_path, extra, valid,"
                " error, source, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return invalid

    def invalid_records(self, limit: int | None = None) -> list[InvalidRecord]:
        sql = "SELECT rid, idx, error, source FROM record WHERE valid = 0 ORDER BY rid"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [InvalidRecord(*row) for row in self.conn.execute(sql)]

    def record_counts(self) -> RecordCounts:
        total, valid = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(valid), 0) FROM record").fetchone()
        return RecordCounts(total, valid, total - valid)

    # ------------------------------------------------------------------ work queue
    def _pending_sql(self, upstream: list[tuple[str, str]]) -> str:
        parts = ["SELECT r.rid FROM record r WHERE r.valid = 1 AND r.rid > ?"]
        for _ in upstream:
            parts.append(
                " AND EXISTS (SELECT 1 FROM stage_state u WHERE u.stage = ? AND u.rid = r.rid"
                " AND u.status = 'done' AND u.settings_hash = ?)"
            )
        parts.append(
            " AND NOT EXISTS (SELECT 1 FROM stage_state s WHERE s.stage = ? AND s.rid = r.rid"
            " AND s.status = 'done' AND s.settings_hash = ?)"
        )
        return "".join(parts)

    @staticmethod
    def _pending_params(stage, settings_hash, upstream, after) -> list:
        params: list = [after]
        for name, h in upstream:
            params += [name, h]
        return params + [stage, settings_hash]

    def pending(self, stage: str, settings_hash: str, upstream: list[tuple[str, str]], *,
                after: int = -1, limit: int = 1000) -> list[int]:
        """Valid records whose upstream stages are done and this stage is not (under these hashes)."""
        sql = self._pending_sql(upstream) + " ORDER BY r.rid LIMIT ?"
        params = self._pending_params(stage, settings_hash, upstream, after) + [limit]
        return [row[0] for row in self.conn.execute(sql, params)]

    def count_pending(self, stage: str, settings_hash: str, upstream: list[tuple[str, str]]) -> int:
        sql = f"SELECT COUNT(*) FROM ({self._pending_sql(upstream)})"
        return self.conn.execute(sql, self._pending_params(stage, settings_hash, upstream, -1)).fetchone()[0]

    def count_done(self, stage: str, settings_hash: str) -> int:
        return self.conn.execute(
            "SELECT COUNT(*) FROM stage_state WHERE stage = ? AND status = 'done' AND settings_hash = ?",
            (stage, settings_hash)).fetchone()[0]

    # ------------------------------------------------------------------ batch reads
    def load_batch(self, rids: list[int], reads: Iterable[str]) -> Batch:
        batch = Batch(rids=list(rids))
        if not rids:
            return batch
        wanted = set(rids)
        lo, hi = min(rids), max(rids)
        reads = set(reads)
        c = self.conn
        if "records" in reads:
            for row in c.execute(
                "SELECT rid, idx, question, image FROM record WHERE rid BETWEEN ? AND ?", (lo, hi)
            ):
                if row[0] in wanted:
                    batch.records[row[0]] = RecordIn._make(row)
        for name in reads & _ANSWER_READS.keys():
            table, row_type, columns = _ANSWER_READS[name]
            target = getattr(batch, name)
            order = "rid, inner_idx, ord" if "ord" in columns.split(", ") else "rid, inner_idx"
            for row in c.execute(
                f"SELECT {columns} FROM {table} WHERE rid BETWEEN ? AND ? ORDER BY {order}", (lo, hi)
            ):
                if row[0] in wanted:
                    target.setdefault(row[0], []).append(row_type._make(row))
        if "logprobs" in reads:
            for role in ("instruct", "reward"):
                rows: dict[int, list[LogprobRow]] = {}
                for row in c.execute(
                    "SELECT rid, inner_idx, role, n_tokens, sum, avg, per_token FROM logprob"
                    " WHERE role = ? AND rid BETWEEN ? AND ? ORDER BY rid, inner_idx", (role, lo, hi)
                ):
                    if row[0] in wanted:
                        rows.setdefault(row[0], []).append(LogprobRow._make(row))
                batch.logprobs[role] = rows
        return batch

    # ------------------------------------------------------------------ commits
    def commit(self, stage: str, settings_hash: str, rids: list[int], outputs: Outputs, *,
               writes: Iterable[str], downstream: Iterable[str], seconds: float) -> None:
        """Store a batch's outputs and its records' new state in one transaction.

        Old outputs of these records for this stage are replaced, so nothing is stored twice,
        and downstream stages' state for them is cleared so they are recomputed."""
        done = [rid for rid in rids if rid not in outputs.failed]
        done_json = json.dumps(done)
        now = time.time()
        per_item = seconds / max(1, len(rids))
        with self.transaction() as c:
            for kind in writes:
                table, scope = OUTPUT_TABLES[kind]
                sql = f"DELETE FROM {table} WHERE rid IN (SELECT value FROM json_each(?))"
                if scope:
                    c.execute(sql + f" AND {scope[0]} = ?", (done_json, scope[1]))
                else:
                    c.execute(sql, (done_json,))
            self._insert_outputs(c, outputs)
            c.executemany(
                "INSERT INTO stage_state (stage, rid, status, settings_hash, attempts, error, finished, seconds)"
                " VALUES (?, ?, ?, ?, 1, ?, ?, ?) ON CONFLICT(stage, rid) DO UPDATE SET"
                " status = excluded.status, settings_hash = excluded.settings_hash,"
                " attempts = stage_state.attempts + 1, error = excluded.error,"
                " finished = excluded.finished, seconds = excluded.seconds",
                [(stage, rid, "failed" if rid in outputs.failed else "done", settings_hash,
                  outputs.failed.get(rid), now, per_item) for rid in rids],
            )
            for name in downstream:
                c.execute("DELETE FROM stage_state WHERE stage = ? AND rid IN"
                          " (SELECT value FROM json_each(?))", (name, done_json))
            c.execute("INSERT INTO metric (ts, stage, items, tokens, seconds) VALUES (?, ?, ?, ?, ?)",
                      (now, stage, len(done), outputs.tokens, seconds))

    @staticmethod
    def _insert_outputs(c: sqlite3.Connection, out: Outputs) -> None:
        if out.samples:
            c.executemany("INSERT INTO sample (rid, inner_idx, text, n_tokens, n_words, text_hash)"
                          " VALUES (?, ?, ?, ?, ?, ?)",
                          [(s.rid, s.inner_idx, s.text, s.n_tokens, s.n_words, s.text_hash)
                           for s in out.samples])
        if out.logprobs:
            c.executemany("INSERT INTO logprob (role, rid, inner_idx, n_tokens, sum, avg, per_token)"
                          " VALUES (?, ?, ?, ?, ?, ?, ?)",
                          [(x.role, x.rid, x.inner_idx, x.n_tokens, x.sum, x.avg, x.per_token)
                           for x in out.logprobs])
        if out.rewards:
            c.executemany("INSERT INTO reward (rid, inner_idx, sum, avg, min, last) VALUES (?, ?, ?, ?, ?, ?)",
                          [(x.rid, x.inner_idx, x.sum, x.avg, x.min, x.last) for x in out.rewards])
        for rows, table in ((out.pairs, "pair"), (out.facts, "fact"), (out.questions, "check_question"),
                            (out.judgments, "judgment"), (out.scores, "score"), (out.notes, "note")):
            if rows:
                marks = ", ".join("?" * len(rows[0]))
                c.executemany(f"INSERT INTO {table} ({', '.join(rows[0]._fields)}) VALUES ({marks})", rows)

    # ------------------------------------------------------------------ run-scope (filter)
    def iter_pairs_for_filter(self, upstream: tuple[str, str]) -> Iterator[tuple]:
        """(rid, ord, chosen_hash, rejected_hash, chosen_words, rejected_words), by rid and ord,
        for records whose pair stage is done under the given hash."""
        yield from self.conn.execute(
            "SELECT p.rid, p.ord, c.text_hash, r.text_hash, c.n_words, r.n_words FROM pair p"
            " JOIN stage_state s ON s.stage = ? AND s.rid = p.rid AND s.status = 'done'"
            "  AND s.settings_hash = ?"
            " JOIN sample c ON c.rid = p.rid AND c.inner_idx = p.chosen"
            " JOIN sample r ON r.rid = p.rid AND r.inner_idx = p.rejected"
            " ORDER BY p.rid, p.ord", upstream)

    def commit_run_stage(self, stage: str, settings_hash: str, upstream: tuple[str, str],
                         kept: Iterable[tuple[int, int]], seconds: float) -> int:
        """Replace the kept pairs (in output order) and mark every eligible record done."""
        now = time.time()
        with self.transaction() as c:
            c.execute("DELETE FROM kept_pair")
            c.executemany("INSERT INTO kept_pair (position, rid, ord) VALUES (?, ?, ?)",
                          ((i, int(rid), int(o)) for i, (rid, o) in enumerate(kept)))
            c.execute("DELETE FROM stage_state WHERE stage = ?", (stage,))
            cur = c.execute(
                "INSERT INTO stage_state (stage, rid, status, settings_hash, attempts, finished, seconds)"
                " SELECT ?, rid, 'done', ?, 1, ?, 0 FROM stage_state"
                " WHERE stage = ? AND status = 'done' AND settings_hash = ?",
                (stage, settings_hash, now, *upstream))
            n = cur.rowcount
            c.execute("INSERT INTO metric (ts, stage, items, tokens, seconds) VALUES (?, ?, ?, 0, ?)",
                      (now, stage, n, seconds))
        return n

    # ------------------------------------------------------------------ reading results
    def iter_kept_pairs(self) -> Iterator[dict]:
        """The output rows in order: record fields, chosen/rejected text and the instruct
        model's log-probs of both (for the RLAIF-V ``logps`` column)."""
        sql = (
            "SELECT k.rid, rec.idx_value, rec.question, rec.image, rec.image_path, rec.extra,"
            " c.text, r.text, c.n_words, r.n_words,"
            " lc.sum, lc.avg, lc.per_token, lr.sum, lr.avg, lr.per_token, p.chosen, p.rejected"
            " FROM kept_pair k JOIN pair p ON p.rid = k.rid AND p.ord = k.ord"
            " JOIN record rec ON rec.rid = k.rid"
            " JOIN sample c ON c.rid = p.rid AND c.inner_idx = p.chosen"
            " JOIN sample r ON r.rid = p.rid AND r.inner_idx = p.rejected"
            " LEFT JOIN logprob lc ON lc.role = 'instruct' AND lc.rid = p.rid AND lc.inner_idx = p.chosen"
            " LEFT JOIN logprob lr ON lr.role = 'instruct' AND lr.rid = p.rid AND lr.inner_idx = p.rejected"
            " ORDER BY k.position"
        )
        keys = ("rid", "idx_value", "question", "image", "image_path", "extra", "chosen", "rejected",
                "chosen_words", "rejected_words", "chosen_logp", "chosen_avg_logp", "chosen_per_token",
                "rejected_logp", "rejected_avg_logp", "rejected_per_token", "chosen_idx", "rejected_idx")
        for row in self.conn.execute(sql):
            yield dict(zip(keys, row))

    def claims_of(self, rid: int, inner_idx: int) -> list[tuple]:
        """(fact, check question, p_yes, p_no) of each claim of one answer, in order; the
        question and probabilities are None where that step produced nothing for it."""
        return self.conn.execute(
            "SELECT f.text, q.text, j.p_yes, j.p_no FROM fact f"
            " LEFT JOIN check_question q ON q.rid = f.rid AND q.inner_idx = f.inner_idx AND q.ord = f.ord"
            " LEFT JOIN judgment j ON j.rid = f.rid AND j.inner_idx = f.inner_idx AND j.ord = f.ord"
            " WHERE f.rid = ? AND f.inner_idx = ? ORDER BY f.ord", (rid, inner_idx)).fetchall()

    def score_of(self, rid: int, inner_idx: int) -> int | None:
        row = self.conn.execute("SELECT score FROM score WHERE rid = ? AND inner_idx = ?",
                                (rid, inner_idx)).fetchone()
        return row[0] if row else None

    def note_counts(self, stage: str) -> dict[str, int]:
        """How many answers a stage left a note on, by reason."""
        return dict(self.conn.execute(
            "SELECT reason, COUNT(*) FROM note WHERE stage = ? GROUP BY reason ORDER BY reason", (stage,)))

    def idx_kind(self) -> str:
        """'integer' when every valid record's idx was given as an integer, else 'text'."""
        other = self.conn.execute(
            "SELECT COUNT(*) FROM record WHERE valid = 1 AND json_type(idx_value) != 'integer'"
        ).fetchone()[0]
        return "text" if other else "integer"

    def extra_column_types(self) -> dict[str, str]:
        """Carried column -> one JSON type (integer, real, text, bool, or other), in first-seen order."""
        seen: dict[str, set[str]] = {}
        for key, kind in self.conn.execute(
            "SELECT DISTINCT j.key, j.type FROM record r, json_each(r.extra) j WHERE r.valid = 1"
        ):
            if kind != "null":
                seen.setdefault(key, set()).add("bool" if kind in ("true", "false") else kind)
        info = self.run_info()
        order = info.extra_columns if info else sorted(seen)
        result = {}
        for name in order:
            kinds = seen.get(name, {"text"})
            if kinds <= {"integer"}:
                result[name] = "integer"
            elif kinds <= {"integer", "real"}:
                result[name] = "real"
            elif len(kinds) == 1:
                result[name] = next(iter(kinds))
            else:
                result[name] = "text"
        return result

    def count(self, table: str) -> int:
        if table not in {"sample", "logprob", "reward", "pair", "kept_pair", "record", "fact",
                         "check_question", "judgment", "score", "note"}:
            raise ValueError(table)
        return self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    def duplicate_keys(self, table: str = "sample") -> int:
        """How many keys of a per-answer table appear more than once (0 by construction)."""
        keys = {"sample": "rid, inner_idx", "score": "rid, inner_idx", "fact": "rid, inner_idx, ord",
                "check_question": "rid, inner_idx, ord", "judgment": "rid, inner_idx, ord"}[table]
        return self.conn.execute(
            f"SELECT COUNT(*) FROM (SELECT {keys} FROM {table} GROUP BY {keys} HAVING COUNT(*) > 1)"
        ).fetchone()[0]

    def samples_of(self, rid: int) -> list[SampleRow]:
        return [SampleRow(*row) for row in self.conn.execute(
            "SELECT rid, inner_idx, text, n_tokens, n_words, text_hash FROM sample WHERE rid = ?"
            " ORDER BY inner_idx", (rid,))]

    # ------------------------------------------------------------------ the live process
    def process_started(self, pid: int, host: str, models: dict[str, str]) -> None:
        now = time.time()
        with self.transaction() as c:
            c.execute("INSERT INTO process (id, pid, host, started, heartbeat, finished, state, models)"
                      " VALUES (1, ?, ?, ?, ?, NULL, 'running', ?) ON CONFLICT(id) DO UPDATE SET"
                      " pid = excluded.pid, host = excluded.host, started = excluded.started,"
                      " heartbeat = excluded.heartbeat, finished = NULL, state = 'running',"
                      " models = excluded.models", (pid, host, now, now, json.dumps(models)))
            # Requests left from an earlier run do not apply to this one.
            c.execute("UPDATE control SET handled = ? WHERE handled IS NULL AND action != 'retry'", (now,))

    def heartbeat(self, state: str | None = None) -> None:
        sql = "UPDATE process SET heartbeat = ?" + (", state = ?" if state else "") + " WHERE id = 1"
        with self.transaction() as c:
            c.execute(sql, (time.time(), state) if state else (time.time(),))

    def process_finished(self, state: str = "finished") -> None:
        now = time.time()
        with self.transaction() as c:
            c.execute("UPDATE process SET finished = ?, heartbeat = ?, state = ? WHERE id = 1", (now, now, state))

    def process_info(self) -> ProcessInfo | None:
        row = self.conn.execute(
            "SELECT pid, host, started, heartbeat, finished, state, models FROM process WHERE id = 1").fetchone()
        if row is None:
            return None
        return ProcessInfo(*row[:6], json.loads(row[6] or "{}"))

    def add_device_samples(self, samples: list[tuple[str, float | None, float | None, float | None]]) -> None:
        now = time.time()
        with self.transaction() as c:
            c.executemany("INSERT INTO device_sample (ts, device, util, mem_used, mem_total) VALUES (?, ?, ?, ?, ?)",
                          [(now, *s) for s in samples])

    def device_samples(self, since: float) -> list[DeviceSample]:
        return [DeviceSample(*row) for row in self.conn.execute(
            "SELECT ts, device, util, mem_used, mem_total FROM device_sample WHERE ts >= ? ORDER BY ts, id",
            (since,))]

    def metrics_since(self, since: float) -> list[MetricRow]:
        """Per-batch throughput rows (ts, stage, items, tokens, seconds), oldest first."""
        return [MetricRow(*row) for row in self.conn.execute(
            "SELECT ts, stage, items, tokens, seconds FROM metric WHERE ts >= ? ORDER BY ts, id", (since,))]

    def recent_failures(self, limit: int = 20) -> list[Failure]:
        return [Failure(*row) for row in self.conn.execute(
            "SELECT s.stage, s.rid, r.idx, s.error, s.attempts, s.finished FROM stage_state s"
            " JOIN record r USING (rid) WHERE s.status = 'failed' ORDER BY s.finished DESC LIMIT ?", (limit,))]

    # ------------------------------------------------------------------ control requests
    def request(self, action: str) -> None:
        """Ask the live run for something ("pause", "resume", "retry"); it acts between batches."""
        if action not in CONTROL_ACTIONS:
            raise ValueError(action)
        with self.transaction() as c:
            c.execute("INSERT INTO control (ts, action) VALUES (?, ?)", (time.time(), action))

    def take_requests(self) -> list[str]:
        """The unhandled requests in order, marked handled."""
        if self.conn.execute("SELECT 1 FROM control WHERE handled IS NULL LIMIT 1").fetchone() is None:
            return []  # the common case, without taking the write lock
        with self.transaction() as c:
            rows = c.execute("SELECT id, action FROM control WHERE handled IS NULL ORDER BY id").fetchall()
            if rows:
                c.execute("UPDATE control SET handled = ? WHERE handled IS NULL", (time.time(),))
        return [action for _, action in rows]

    def pending_requests(self) -> list[str]:
        return [a for (a,) in self.conn.execute("SELECT action FROM control WHERE handled IS NULL ORDER BY id")]

    def requeue_failed(self) -> int:
        """Forget failed states so the failed records are pending again."""
        with self.transaction() as c:
            return c.execute("DELETE FROM stage_state WHERE status = 'failed'").rowcount

    # ------------------------------------------------------------------ one record, in full
    def record_detail(self, rid: int) -> RecordDetail | None:
        row = self.conn.execute("SELECT rid, idx, question, image, valid, error FROM record WHERE rid = ?",
                                (rid,)).fetchone()
        if row is None:
            return None
        rewards = {j: (s, a) for j, s, a in self.conn.execute(
            "SELECT inner_idx, sum, avg FROM reward WHERE rid = ?", (rid,))}
        scores = dict(self.conn.execute("SELECT inner_idx, score FROM score WHERE rid = ?", (rid,)))
        claims: dict[int, list[tuple]] = {}
        for j, fact, question, p_yes, p_no in self.conn.execute(
            "SELECT f.inner_idx, f.text, q.text, jd.p_yes, jd.p_no FROM fact f"
            " LEFT JOIN check_question q ON q.rid = f.rid AND q.inner_idx = f.inner_idx AND q.ord = f.ord"
            " LEFT JOIN judgment jd ON jd.rid = f.rid AND jd.inner_idx = f.inner_idx AND jd.ord = f.ord"
            " WHERE f.rid = ? ORDER BY f.inner_idx, f.ord", (rid,)):
            claims.setdefault(j, []).append((fact, question, p_yes, p_no))
        answers = [AnswerDetail(j, text, rewards.get(j), scores.get(j), tuple(claims.get(j, ())))
                   for j, text in self.conn.execute(
                       "SELECT inner_idx, text FROM sample WHERE rid = ? ORDER BY inner_idx", (rid,))]
        kept = {o for (o,) in self.conn.execute("SELECT ord FROM kept_pair WHERE rid = ?", (rid,))}
        pairs = [(chosen, rejected, o in kept) for o, chosen, rejected in self.conn.execute(
            "SELECT ord, chosen, rejected FROM pair WHERE rid = ? ORDER BY ord", (rid,))]
        return RecordDetail(row[0], row[1], row[2], row[3], bool(row[4]), row[5], answers, pairs)

    def record_ids(self, limit: int = 100_000) -> list[int]:
        """Ids of records that have answers, for browsing."""
        return [r for (r,) in self.conn.execute(
            "SELECT DISTINCT rid FROM sample ORDER BY rid LIMIT ?", (limit,))]

    # ------------------------------------------------------------------ status
    def status(self, stage_order: list[str] | None = None) -> StatusSnapshot:
        info = self.run_info()
        counts = self.record_counts()
        hashes = info.stage_hashes if info else {}
        names = stage_order or list(hashes)
        stages = []
        for name in names:
            h = hashes.get(name, "")
            done, failed = self.conn.execute(
                "SELECT COALESCE(SUM(status = 'done'), 0), COALESCE(SUM(status = 'failed'), 0)"
                " FROM stage_state WHERE stage = ? AND settings_hash = ?", (name, h)).fetchone()
            items, tokens, secs = self.conn.execute(
                "SELECT COALESCE(SUM(items), 0), COALESCE(SUM(tokens), 0), COALESCE(SUM(seconds), 0)"
                " FROM metric WHERE stage = ?", (name,)).fetchone()
            stages.append(StageCounts(
                name, done, max(0, counts.valid - done - failed), failed,
                items / secs if secs > 0 else None, tokens / secs if secs > 0 and tokens else None,
                self.note_counts(name)))
        return StatusSnapshot(info.pipeline if info else None, counts, stages)
