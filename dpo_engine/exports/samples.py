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
    rows = []
    for a in store.answers_in_full(rid):
        s, reward, score = a["sample"], a["reward"], a["score"]
        logps = [{**e, "per_token": np.frombuffer(e["per_token"], "<f4").tolist() if e["per_token"] is not None
                  else None} for e in a["logps"]]
        status = ("kept" if a["chosen_in_kept"] + a["rejected_in_kept"]
                  else "filtered" if a["chosen_in_pairs"] + a["rejected_in_pairs"] else "unpaired")
        rows.append({"idx": idx, "question": question, "inner_idx": s.inner_idx, "text": s.text,
                     "n_tokens": s.n_tokens, "n_words": s.n_words, "logps": logps, "reward_sum": reward[0],
                     "reward_avg": reward[1], "reward_min": reward[2], "reward_last": reward[3],
                     "claims": [dict(zip(("fact", "question", "p_yes", "p_no"), c)) for c in a["claims"]],
                     "score": score[0], "n_claims": score[1], "notes": a["notes"],
                     "chosen_in_pairs": a["chosen_in_pairs"], "rejected_in_pairs": a["rejected_in_pairs"],
                     "chosen_in_kept": a["chosen_in_kept"], "rejected_in_kept": a["rejected_in_kept"],
                     "status": status})
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
    records = store.records_with_samples()
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
