"""Everything a run writes: the run's settings, the input records, each batch's outputs
with its records' new state (in one transaction), and the run-scope filter's kept pairs."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable

from ..dataset import encode_extra
from ..stage import Outputs
from .schema import OUTPUT_TABLES, StoreBase


class StoreWrites(StoreBase):
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

    def mark_complete(self, settings_hash: str) -> None:
        """Remember that every stage finished under ``settings_hash`` (the last stage's)."""
        with self.transaction() as c:
            c.execute("UPDATE run SET complete_hash = ? WHERE id = 1", (settings_hash,))

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
    def insert_records(self, records: list, *, copy_images: bool = False) -> int:
        """Insert ``RawRecord``s; a valid row whose idx is already taken becomes invalid. A
        record keeps where its image lies and its hash; ``copy_images`` stores the bytes too.

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
            ok = error is None
            rows.append((r.row, r.idx, json.dumps(r.idx_value, default=str), r.question,
                         r.image if ok and copy_images else None, r.image_path, encode_extra(r.extra),
                         int(ok), error, r.source, r.row_hash, r.image_file if ok else None,
                         r.image_pos if ok else None, r.image_hash if ok else None))
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO record (rid, idx, idx_value, question, image, image_path, extra, valid,"
                " error, source, row_hash, image_file, image_pos, image_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return invalid

    def relocate_images(self, moves: list[tuple[str, int | None, int]]) -> None:
        """New (image_file, image_pos) of records (by rid) whose dataset was moved: ingest found
        their rows unchanged at another place."""
        with self.transaction() as c:
            c.executemany("UPDATE record SET image_file = ?, image_pos = ? WHERE rid = ?", moves)

    # ------------------------------------------------------------------ commits
    def commit(self, stage: str, settings_hash: str, rids: list[int], outputs: Outputs, *,
               writes: Iterable[str], downstream: Iterable[str], seconds: float,
               holder: str | None = None) -> bool:
        """Store a batch's outputs and its records' new state in one transaction.

        Old outputs of these records for this stage are replaced, so nothing is stored twice,
        and downstream stages' state for them is cleared so they are recomputed. With a
        ``holder``, the batch is stored only if it still holds the records' leases (which the
        commit drops); if another process took them over meanwhile, nothing is written and the
        answer is False."""
        done = [rid for rid in rids if rid not in outputs.failed]
        done_json = json.dumps(done)
        now = time.time()
        per_item = seconds / max(1, len(rids))
        with self.transaction() as c:
            if holder is not None:
                released = c.execute("DELETE FROM lease WHERE stage = ? AND holder = ? AND rid IN"
                                     " (SELECT value FROM json_each(?))",
                                     (stage, holder, json.dumps(rids))).rowcount
                if released != len(rids):
                    return False
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
            # Done now: a death while it was in flight was not its doing.
            c.execute("DELETE FROM death WHERE stage = ? AND rid IN (SELECT value FROM json_each(?))",
                      (stage, done_json))
            c.execute("INSERT INTO metric (ts, stage, items, tokens, seconds) VALUES (?, ?, ?, ?, ?)",
                      (now, stage, len(done), outputs.tokens, seconds))
        return True

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
