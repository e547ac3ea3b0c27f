"""Everything read back: the run, the records, the work queue and batch reads for the
stages, the results for the output, one record in full, and the status counts."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator

from ..dataset import decode_extra
from ..errors import DatasetChanged
from ..images import ImageReader, ImageRef
from ..stage import (Batch, FactRow, JudgmentRow, LogprobRow, QuestionRow, RecordIn, RewardRow, SampleRow,
                    ScoreRow)
from .rows import (AnswerDetail, InvalidRecord, RecordCounts, RecordDetail, RunInfo, StageCounts,
                   StatusSnapshot)
from .schema import StoreBase

# The per-answer tables a batch read can ask for: Batch field -> (table, row type, columns).
_ANSWER_READS = {
    "samples": ("sample", SampleRow, "rid, inner_idx, text, n_tokens, n_words, text_hash"),
    "rewards": ("reward", RewardRow, "rid, inner_idx, sum, avg, min, last"),
    "facts": ("fact", FactRow, "rid, inner_idx, ord, text"),
    "questions": ("check_question", QuestionRow, "rid, inner_idx, ord, text"),
    "judgments": ("judgment", JudgmentRow, "rid, inner_idx, ord, p_yes, p_no"),
    "scores": ("score", ScoreRow, "rid, inner_idx, score, n_claims"),
}


class StoreReads(StoreBase):
    # ------------------------------------------------------------------ run
    def run_info(self) -> RunInfo | None:
        row = self.conn.execute(
            "SELECT pipeline, dataset, settings, stage_hashes, extra_columns FROM run WHERE id = 1"
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return RunInfo(row[0], row[1], json.loads(row[2] or "{}"), json.loads(row[3] or "{}"),
                       json.loads(row[4] or "[]"))

    # ------------------------------------------------------------------ records
    def record_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM record").fetchone()[0]

    def iter_row_hashes(self) -> Iterator[tuple[int, str, str | None, int | None]]:
        """(rid, row_hash, image_file, image_pos) of every record, in order."""
        yield from self.conn.execute("SELECT rid, row_hash, image_file, image_pos FROM record ORDER BY rid")

    # The columns that give a record's image (see _image).
    _IMAGE_COLUMNS = "rec.image, rec.image_file, rec.image_pos, rec.image_hash, rec.idx, rec.source"

    def _image(self, blob, file, pos, digest, idx, source) -> bytes | None:
        """A record's image: its bytes where the store holds them, else read back from the
        dataset and checked against the hash taken at ingest."""
        if blob is not None or file is None:
            return blob
        return self._image_reader().read(ImageRef(file, pos, digest, f"record {idx} ({source})"))

    def _image_reader(self) -> ImageReader:
        if self._images is None:
            self._images = ImageReader()
        return self._images

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
        parts = ["SELECT r.rid FROM record r WHERE r.valid = 1"]
        for _ in upstream:
            parts.append(
                " AND EXISTS (SELECT 1 FROM stage_state u WHERE u.stage = ? AND u.rid = r.rid"
                " AND u.status = 'done' AND u.settings_hash = ?)"
            )
        parts.append(
            " AND NOT EXISTS (SELECT 1 FROM stage_state s WHERE s.stage = ? AND s.rid = r.rid"
            " AND s.settings_hash = ? AND (s.status IN ('done', 'quarantined') OR s.finished >= ?))"
        )
        return "".join(parts)

    @staticmethod
    def _pending_params(stage, settings_hash, upstream, failed_since) -> list:
        params: list = []
        for name, h in upstream:
            params += [name, h]
        return params + [stage, settings_hash, failed_since]

    def pending(self, stage: str, settings_hash: str, upstream: list[tuple[str, str]], *,
                limit: int = 1000, failed_since: float = math.inf) -> list[int]:
        """Valid records whose upstream stages are done and this stage is not (under these
        hashes), leaving out those that failed at or after ``failed_since`` (a pass does not
        retry its own failures; the next run does)."""
        sql = self._pending_sql(upstream) + " ORDER BY r.rid LIMIT ?"
        params = self._pending_params(stage, settings_hash, upstream, failed_since) + [limit]
        return [row[0] for row in self.conn.execute(sql, params)]

    def count_pending(self, stage: str, settings_hash: str, upstream: list[tuple[str, str]], *,
                      failed_since: float = math.inf) -> int:
        sql = f"SELECT COUNT(*) FROM ({self._pending_sql(upstream)})"
        params = self._pending_params(stage, settings_hash, upstream, failed_since)
        return self.conn.execute(sql, params).fetchone()[0]

    def unfinished(self, stages: list[tuple[str, str, list[tuple[str, str]]]]) -> int:
        """Record-stages never attempted under the given (stage, hash, upstream)s; 0 when a
        run with these settings has finished (failed records count as attempted)."""
        return sum(self.count_pending(name, h, upstream, failed_since=-math.inf) for name, h, upstream in stages)

    def complete_hash(self) -> str | None:
        """The settings hash of the last run that finished every stage, if any."""
        row = self.conn.execute("SELECT complete_hash FROM run WHERE id = 1").fetchone()
        return row[0] if row else None

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
                f"SELECT rid, idx, question, {self._IMAGE_COLUMNS} FROM record rec WHERE rid BETWEEN ? AND ?",
                (lo, hi)
            ).fetchall():
                if row[0] in wanted:
                    batch.records[row[0]] = RecordIn(*row[:3], self._image(*row[3:]))
        if "extras" in reads:
            for rid, extra in c.execute("SELECT rid, extra FROM record WHERE rid BETWEEN ? AND ?", (lo, hi)):
                if rid in wanted:
                    batch.extras[rid] = decode_extra(extra)
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

    # ------------------------------------------------------------------ run-scope (filter)
    def iter_pairs_for_filter(self, upstream: tuple[str, str], texts: bool = False) -> Iterator[tuple]:
        """(rid, ord, chosen_hash, rejected_hash, chosen_words, rejected_words), by rid and ord,
        for records whose pair stage is done under the given hash; with ``texts``, the chosen
        and rejected texts in place of their word counts (for a filter that counts its own way)."""
        last = "c.text, r.text" if texts else "c.n_words, r.n_words"
        yield from self.conn.execute(
            f"SELECT p.rid, p.ord, c.text_hash, r.text_hash, {last} FROM pair p"
            " JOIN stage_state s ON s.stage = ? AND s.rid = p.rid AND s.status = 'done'"
            "  AND s.settings_hash = ?"
            " JOIN sample c ON c.rid = p.rid AND c.inner_idx = p.chosen"
            " JOIN sample r ON r.rid = p.rid AND r.inner_idx = p.rejected"
            " ORDER BY p.rid, p.ord", upstream)

    # ------------------------------------------------------------------ reading results
    def iter_kept_pairs(self, logps: bool = True, images: bool = True) -> Iterator[dict]:
        """The output rows in order: record fields, chosen/rejected text and the instruct
        model's log-probs of both (for the RLAIF-V ``logps`` column; None without ``logps``).
        Without ``images``, ``image`` is None (nothing is read from the dataset)."""
        if images:  # the order is shuffled: read what parquet files hold in their order first
            self._image_reader().spool(ImageRef(file, pos, digest, f"record {idx} ({source})") for
                                       file, pos, digest, idx, source in self.conn.execute(
                "SELECT DISTINCT rec.image_file, rec.image_pos, rec.image_hash, rec.idx, rec.source"
                " FROM kept_pair k JOIN record rec ON rec.rid = k.rid"
                " WHERE rec.image IS NULL AND rec.image_file IS NOT NULL").fetchall())
        sql = (
            f"SELECT k.rid, rec.idx_value, rec.question, {self._IMAGE_COLUMNS}, rec.image_path, rec.extra,"
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
        blank = dict.fromkeys(keys[10:16]) if not logps else {}
        for row in self.conn.execute(sql):
            image = self._image(*row[3:9]) if images else None
            yield {**dict(zip(keys, (*row[:3], image, *row[9:]))), **blank}

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

    # ------------------------------------------------------------------ one record, in full
    def record_detail(self, rid: int) -> RecordDetail | None:
        row = self.conn.execute(f"SELECT rid, idx, question, {self._IMAGE_COLUMNS}, valid, error FROM record rec"
                                " WHERE rid = ?", (rid,)).fetchone()
        if row is None:
            return None
        try:
            image = self._image(*row[3:9])
        except DatasetChanged:
            image = None  # the browser shows the record without it
        row = (*row[:3], image, *row[9:])
        rewards = self._rewards_by_answer(rid)
        scores = {j: s for j, (s, _) in self._scores_by_answer(rid).items()}
        claims = self._claims_by_answer(rid)
        answers = [AnswerDetail(j, text, rewards[j][:2] if j in rewards else None, scores.get(j),
                                tuple(claims.get(j, ())))
                   for j, text in self.conn.execute(
                       "SELECT inner_idx, text FROM sample WHERE rid = ? ORDER BY inner_idx", (rid,))]
        return RecordDetail(row[0], row[1], row[2], row[3], bool(row[4]), row[5], answers, self._pairs_of(rid))

    def _rewards_by_answer(self, rid: int) -> dict[int, tuple]:
        """inner_idx -> (sum, avg, min, last) of one record's rewards."""
        return {j: (s, a, mn, last) for j, s, a, mn, last in self.conn.execute(
            "SELECT inner_idx, sum, avg, min, last FROM reward WHERE rid = ?", (rid,))}

    def _scores_by_answer(self, rid: int) -> dict[int, tuple[int, int]]:
        """inner_idx -> (score, n_claims) of one record's answers."""
        return {j: (s, n) for j, s, n in self.conn.execute(
            "SELECT inner_idx, score, n_claims FROM score WHERE rid = ?", (rid,))}

    def _claims_by_answer(self, rid: int) -> dict[int, list[tuple]]:
        """inner_idx -> [(fact, check question, p_yes, p_no), ...] in order."""
        claims: dict[int, list[tuple]] = {}
        for j, fact, question, p_yes, p_no in self.conn.execute(
            "SELECT f.inner_idx, f.text, q.text, jd.p_yes, jd.p_no FROM fact f"
            " LEFT JOIN check_question q ON q.rid = f.rid AND q.inner_idx = f.inner_idx AND q.ord = f.ord"
            " LEFT JOIN judgment jd ON jd.rid = f.rid AND jd.inner_idx = f.inner_idx AND jd.ord = f.ord"
            " WHERE f.rid = ? ORDER BY f.inner_idx, f.ord", (rid,)):
            claims.setdefault(j, []).append((fact, question, p_yes, p_no))
        return claims

    def _pairs_of(self, rid: int) -> list[tuple[int, int, bool]]:
        """(chosen, rejected, kept in the output) of one record's pairs, in order."""
        kept = {o for (o,) in self.conn.execute("SELECT ord FROM kept_pair WHERE rid = ?", (rid,))}
        return [(chosen, rejected, o in kept) for o, chosen, rejected in self.conn.execute(
            "SELECT ord, chosen, rejected FROM pair WHERE rid = ? ORDER BY ord", (rid,))]

    def records_with_samples(self) -> list[tuple[int, str, str]]:
        """(rid, idx, question) of every valid record that has answers, in order."""
        return self.conn.execute(
            "SELECT rid, idx, question FROM record WHERE valid = 1 AND rid IN (SELECT DISTINCT rid FROM sample)"
            " ORDER BY rid").fetchall()

    def answers_in_full(self, rid: int) -> list[dict]:
        """Everything the stages computed for each of one record's answers (``export --what
        samples``): the sample, log-probs per role (per-token values as float32 bytes), reward,
        score, claims, notes, and in how many pairs it is chosen/rejected, before and after
        the filters."""
        logps: dict[int, list] = {}
        for role, j, n, total, avg, per_token in self.conn.execute(
                "SELECT role, inner_idx, n_tokens, sum, avg, per_token FROM logprob WHERE rid = ? ORDER BY role",
                (rid,)):
            logps.setdefault(j, []).append({"role": role, "n_tokens": n, "sum": total, "avg": avg,
                                            "per_token": per_token})
        notes: dict[int, list] = {}
        for j, stage, reason in self.conn.execute(
                "SELECT inner_idx, stage, reason FROM note WHERE rid = ? ORDER BY stage", (rid,)):
            notes.setdefault(j, []).append(f"{stage}: {reason}")
        rewards, scores, claims = self._rewards_by_answer(rid), self._scores_by_answer(rid), self._claims_by_answer(rid)
        pairs = self._pairs_of(rid)
        out = []
        for s in self.samples_of(rid):
            j = s.inner_idx
            out.append({"sample": s, "logps": logps.get(j, []), "reward": rewards.get(j, (None,) * 4),
                        "score": scores.get(j, (None, None)), "claims": claims.get(j, []), "notes": notes.get(j, []),
                        "chosen_in_pairs": sum(c == j for c, _, _ in pairs),
                        "rejected_in_pairs": sum(r == j for _, r, _ in pairs),
                        "chosen_in_kept": sum(c == j and k for c, _, k in pairs),
                        "rejected_in_kept": sum(r == j and k for _, r, k in pairs)})
        return out

    def iter_pairs_in_full(self) -> Iterator[dict]:
        """Every pair, kept or filtered out, with both answers' texts (``run --debug``)."""
        kept = {(rid, o) for rid, o in self.conn.execute("SELECT rid, ord FROM kept_pair")}
        for idx, rid, o, c, r, chosen, rejected in self.conn.execute(
                "SELECT rec.idx, p.rid, p.ord, p.chosen, p.rejected, c.text, x.text FROM pair p"
                " JOIN record rec ON rec.rid = p.rid JOIN sample c ON c.rid = p.rid AND c.inner_idx = p.chosen"
                " JOIN sample x ON x.rid = p.rid AND x.inner_idx = p.rejected ORDER BY p.rid, p.ord"):
            yield {"idx": idx, "ord": o, "chosen_inner_idx": c, "rejected_inner_idx": r, "chosen": chosen,
                   "rejected": rejected, "kept": (rid, o) in kept}

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
        backends = info.settings.get("stage_backends", {}) if info else {}
        paths = info.settings.get("stage_paths", {}) if info else {}
        stages = []
        for name in names:
            h = hashes.get(name, "")
            done, failed = self.conn.execute(
                "SELECT COALESCE(SUM(status = 'done'), 0), COALESCE(SUM(status IN ('failed', 'quarantined')), 0)"
                " FROM stage_state WHERE stage = ? AND settings_hash = ?", (name, h)).fetchone()
            items, tokens, secs = self.conn.execute(
                "SELECT COALESCE(SUM(items), 0), COALESCE(SUM(tokens), 0), COALESCE(SUM(seconds), 0)"
                " FROM metric WHERE stage = ?", (name,)).fetchone()
            stages.append(StageCounts(
                name, done, max(0, counts.valid - done - failed), failed,
                items / secs if secs > 0 else None, tokens / secs if secs > 0 and tokens else None,
                self.note_counts(name), backends.get(name), paths.get(name)))
        return StatusSnapshot(info.pipeline if info else None, counts, stages, self.workers(), self.lease_holders(),
                              self.quarantined())
