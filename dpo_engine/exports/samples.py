"""``export --what samples``: one row per sampled answer, with everything the stages computed
for it, for inspecting a run or reusing its log-probs.

Each row: the record's ``idx`` and ``question``; the answer (``inner_idx``, ``text``,
``n_tokens``, ``n_words``); ``logps``, one entry per model role that scored it (summed and
average log-prob, per-token values); the implicit reward (``reward_sum``, ``reward_avg``,
``reward_min``, ``reward_last``; dpo_reward); ``claims`` (fact, check question, p_yes, p_no) and
``score``/``n_claims`` (divide_and_conquer); ``notes`` (why a stage got nothing from it); how
often it is the chosen or the rejected answer of a pair, before and after the filters; and
``status``: ``kept`` (in a kept pair), ``filtered`` (only in pairs the filters dropped) or
``unpaired``. Written as parquet (no images: ``idx`` joins it to the dataset) or JSONL.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DpoEngineError
from ..store import Store
from ._arrow import atomic_file

CHUNK = 512
FORMATS = ("parquet", "jsonl")

SCHEMA = pa.schema([
    ("idx", pa.string()), ("question", pa.string()), ("inner_idx", pa.int32()), ("text", pa.string()),
    ("n_tokens", pa.int32()), ("n_words", pa.int32()),
    ("logps", pa.list_(pa.struct([("role", pa.string()), ("n_tokens", pa.int32()), ("sum", pa.float64()),
                                  ("avg", pa.float64()), ("per_token", pa.list_(pa.float32()))]))),
    ("reward_sum", pa.float64()), ("reward_avg", pa.float64()), ("reward_min", pa.float64()),
    ("reward_last", pa.float64()),
    ("claims", pa.list_(pa.struct([("fact", pa.string()), ("question", pa.string()), ("p_yes", pa.float64()),
                                   ("p_no", pa.float64())]))),
    ("score", pa.int32()), ("n_claims", pa.int32()), ("notes", pa.list_(pa.string())),
    ("chosen_in_pairs", pa.int32()), ("rejected_in_pairs", pa.int32()), ("chosen_in_kept", pa.int32()),
    ("rejected_in_kept", pa.int32()), ("status", pa.string()),
])


def _record_rows(store: Store, rid: int, idx: str, question: str) -> list[dict]:
    conn = store.conn
    logps: dict[int, list] = {}
    for role, j, n, total, avg, per_token in conn.execute(
            "SELECT role, inner_idx, n_tokens, sum, avg, per_token FROM logprob WHERE rid = ? ORDER BY role", (rid,)):
        values = np.frombuffer(per_token, "<f4").tolist() if per_token is not None else None
        logps.setdefault(j, []).append({"role": role, "n_tokens": n, "sum": total, "avg": avg, "per_token": values})
    rewards = {j: (s, a, mn, last) for j, s, a, mn, last in conn.execute(
        "SELECT inner_idx, sum, avg, min, last FROM reward WHERE rid = ?", (rid,))}
    scores = {j: (s, n) for j, s, n in conn.execute("SELECT inner_idx, score, n_claims FROM score WHERE rid = ?",
                                                    (rid,))}
    claims: dict[int, list] = {}
    for j, fact, question_text, p_yes, p_no in conn.execute(
            "SELECT f.inner_idx, f.text, q.text, jd.p_yes, jd.p_no FROM fact f"
            " LEFT JOIN check_question q ON q.rid = f.rid AND q.inner_idx = f.inner_idx AND q.ord = f.ord"
            " LEFT JOIN judgment jd ON jd.rid = f.rid AND jd.inner_idx = f.inner_idx AND jd.ord = f.ord"
            " WHERE f.rid = ? ORDER BY f.inner_idx, f.ord", (rid,)):
        claims.setdefault(j, []).append({"fact": fact, "question": question_text, "p_yes": p_yes, "p_no": p_no})
    notes: dict[int, list] = {}
    for j, stage, reason in conn.execute("SELECT inner_idx, stage, reason FROM note WHERE rid = ? ORDER BY stage",
                                         (rid,)):
        notes.setdefault(j, []).append(f"{stage}: {reason}")
    pairs = conn.execute("SELECT ord, chosen, rejected FROM pair WHERE rid = ?", (rid,)).fetchall()
    kept = {o for (o,) in conn.execute("SELECT ord FROM kept_pair WHERE rid = ?", (rid,))}
    chosen, rejected = Counter(c for _, c, _ in pairs), Counter(r for _, _, r in pairs)
    kept_chosen = Counter(c for o, c, _ in pairs if o in kept)
    kept_rejected = Counter(r for o, _, r in pairs if o in kept)
    rows = []
    for s in store.samples_of(rid):
        j = s.inner_idx
        reward = rewards.get(j, (None,) * 4)
        score = scores.get(j, (None, None))
        in_kept = kept_chosen[j] + kept_rejected[j]
        status = "kept" if in_kept else ("filtered" if chosen[j] + rejected[j] else "unpaired")
        rows.append({"idx": idx, "question": question, "inner_idx": j, "text": s.text, "n_tokens": s.n_tokens,
                     "n_words": s.n_words, "logps": logps.get(j, []), "reward_sum": reward[0],
                     "reward_avg": reward[1], "reward_min": reward[2], "reward_last": reward[3],
                     "claims": claims.get(j, []), "score": score[0], "n_claims": score[1], "notes": notes.get(j, []),
                     "chosen_in_pairs": chosen[j], "rejected_in_pairs": rejected[j],
                     "chosen_in_kept": kept_chosen[j], "rejected_in_kept": kept_rejected[j], "status": status})
    return rows


def export_samples(store: Store, out: str | Path, fmt: str = "parquet") -> int:
    """Write every sample of ``store`` to ``out``; returns the number of rows."""
    if fmt not in FORMATS:
        raise DpoEngineError(f"--what samples is written as {' or '.join(FORMATS)}, not {fmt!r}",
                             "pass --format parquet or --format jsonl")
    out = Path(out)
    if out.is_dir():
        raise DpoEngineError(f"{out} is a folder", "name the file to write")
    if store.count("sample") == 0:
        raise DpoEngineError(f"{store.path} holds no samples yet", "run `dpo-engine run` first")
    records = store.conn.execute(
        "SELECT rid, idx, question FROM record WHERE valid = 1 AND rid IN (SELECT DISTINCT rid FROM sample)"
        " ORDER BY rid").fetchall()
    n = 0
    with atomic_file(out) as fh:
        writer = pq.ParquetWriter(fh, SCHEMA, compression="zstd") if fmt == "parquet" else None
        try:
            chunk: list[dict] = []
            for rid, idx, question in records:
                chunk += _record_rows(store, rid, idx, question)
                if len(chunk) >= CHUNK or rid == records[-1][0]:
                    n += len(chunk)
                    if writer is not None:
                        writer.write_table(pa.Table.from_pylist(chunk, schema=SCHEMA))
                    else:
                        fh.write("".join(json.dumps(row) + "\n" for row in chunk).encode())
                    chunk = []
        finally:
            if writer is not None:
                writer.close()
    return n
