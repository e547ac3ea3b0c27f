"""Write the kept pairs as a parquet dataset, streaming, in the run's (shuffled) order.

Two formats:

* ``rlaif-v``: the reference's columns ``idx, question, chosen, rejected, image`` plus the
  carried input columns, and ``logps`` (the instruct model's log-probs of both answers, the
  six-value JSON list RLAIF-V's trainer accepts as precomputed reference log-probs).
* ``trl``: TRL's conversational vision preference format: ``images`` (a list of one image),
  ``prompt``, ``chosen`` and ``rejected`` as message lists, plus ``idx``.

A divide_and_conquer run adds, in both formats, each answer's score and its claims:
``chosen_score``, ``rejected_score`` and ``chosen_claims`` / ``rejected_claims``, a list of
``{fact, question, p_yes, p_no, true}`` (TRL ignores columns it does not know).

Both carry the ``huggingface`` schema metadata that makes ``datasets.load_dataset("parquet")``
decode the image columns as images.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..dataset import decode_extra
from ..errors import DpoEngineError
from ..store import Store

FORMATS = ("rlaif-v", "trl")
CHUNK_ROWS = 256
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
CLAIMS_TYPE = pa.list_(pa.struct([pa.field("fact", pa.string()), pa.field("question", pa.string()),
                                  pa.field("p_yes", pa.float64()), pa.field("p_no", pa.float64()),
                                  pa.field("true", pa.bool_())]))
CLAIM_COLUMNS = ("chosen_score", "rejected_score", "chosen_claims", "rejected_claims")
MESSAGE_TYPE = pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))
_JSON_TO_ARROW = {"integer": pa.int64(), "real": pa.float64(), "text": pa.string(), "bool": pa.bool_()}
_ARROW_TO_VALUE = {pa.int64(): "int64", pa.float64(): "float64", pa.string(): "string", pa.bool_(): "bool"}


@dataclass(frozen=True)
class ExportReport:
    path: Path
    pairs: int
    records_with_pairs: int
    mean_chosen_words: float
    mean_rejected_words: float


def _value(arrow_type: pa.DataType) -> dict:
    return {"dtype": _ARROW_TO_VALUE[arrow_type], "_type": "Value"}


def _hf_metadata(features: dict) -> dict[bytes, bytes]:
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _atomic_writer(path: Path, schema: pa.Schema):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    return tmp, pq.ParquetWriter(tmp, schema, compression="zstd")


def export(store: Store, out: str | Path, fmt: str = "rlaif-v") -> ExportReport:
    if fmt not in FORMATS:
        raise DpoEngineError(f"unknown export format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    out = Path(out)
    if store.count("kept_pair") == 0 and store.count("pair") == 0 and store.count("sample") == 0:
        raise DpoEngineError(f"{store.path} holds no results yet", "run `dpo-engine run` first")
    idx_type = pa.int64() if store.idx_kind() == "integer" else pa.string()
    extras = store.extra_column_types()
    extra_types = {name: _JSON_TO_ARROW.get(kind, pa.string()) for name, kind in extras.items()}
    if fmt == "rlaif-v":
        fields = [("idx", idx_type), ("question", pa.string()), ("chosen", pa.string()),
                  ("rejected", pa.string()), ("image", IMAGE_TYPE), ("logps", pa.string())]
        fields += [(n, t) for n, t in extra_types.items() if n not in {f for f, _ in fields}]
        features = {n: ({"_type": "Image"} if n == "image" else _value(t)) for n, t in fields}
    else:
        fields = [("images", pa.list_(IMAGE_TYPE)), ("prompt", MESSAGE_TYPE),
                  ("chosen", MESSAGE_TYPE), ("rejected", MESSAGE_TYPE), ("idx", idx_type)]
        message = {"_type": "List", "feature": {"role": _value(pa.string()), "content": _value(pa.string())}}
        features = {"images": {"_type": "List", "feature": {"_type": "Image"}}, "prompt": message,
                    "chosen": message, "rejected": message, "idx": _value(idx_type)}
    info = store.run_info()
    claims = info is not None and info.pipeline == "divide_and_conquer"
    if claims:
        claim_feature = {"_type": "List", "feature": {
            "fact": _value(pa.string()), "question": _value(pa.string()), "p_yes": _value(pa.float64()),
            "p_no": _value(pa.float64()), "true": _value(pa.bool_())}}
        fields = [(n, t) for n, t in fields if n not in CLAIM_COLUMNS]
        fields += [("chosen_score", pa.int64()), ("rejected_score", pa.int64()),
                   ("chosen_claims", CLAIMS_TYPE), ("rejected_claims", CLAIMS_TYPE)]
        features = {n: v for n, v in features.items() if n not in CLAIM_COLUMNS}
        features.update(chosen_score=_value(pa.int64()), rejected_score=_value(pa.int64()),
                        chosen_claims=claim_feature, rejected_claims=claim_feature)
    schema = pa.schema([pa.field(n, t) for n, t in fields], metadata=_hf_metadata(features))
    tmp, writer = _atomic_writer(out, schema)
    columns: dict[str, list] = {n: [] for n, _ in fields}
    n_pairs = 0
    chosen_words = rejected_words = 0
    rids: set[int] = set()
    try:
        for row in store.iter_kept_pairs():
            n_pairs += 1
            rids.add(row["rid"])
            chosen_words += row["chosen_words"]
            rejected_words += row["rejected_words"]
            _append(columns, row, fmt, extra_types)
            if claims:
                for side in ("chosen", "rejected"):
                    answer = row[f"{side}_idx"]
                    columns[f"{side}_score"].append(store.score_of(row["rid"], answer))
                    columns[f"{side}_claims"].append([
                        {"fact": f, "question": q, "p_yes": py, "p_no": pn,
                         "true": None if py is None else py > pn}
                        for f, q, py, pn in store.claims_of(row["rid"], answer)])
            if len(columns["idx"]) >= CHUNK_ROWS:
                writer.write_table(pa.table(columns, schema=schema))
                columns = {n: [] for n, _ in fields}
        if columns["idx"] or n_pairs == 0:
            writer.write_table(pa.table(columns, schema=schema))
    finally:
        writer.close()
    os.replace(tmp, out)
    return ExportReport(out, n_pairs, len(rids), chosen_words / n_pairs if n_pairs else 0.0,
                        rejected_words / n_pairs if n_pairs else 0.0)


def _append(columns: dict, row: dict, fmt: str, extra_types: dict) -> None:
    idx = json.loads(row["idx_value"])
    image = {"bytes": row["image"], "path": row["image_path"] or None}
    if fmt == "trl":
        columns["images"].append([image])
        columns["prompt"].append([{"role": "user", "content": row["question"]}])
        columns["chosen"].append([{"role": "assistant", "content": row["chosen"]}])
        columns["rejected"].append([{"role": "assistant", "content": row["rejected"]}])
        columns["idx"].append(idx)
        return
    columns["idx"].append(idx)
    columns["question"].append(row["question"])
    columns["chosen"].append(row["chosen"])
    columns["rejected"].append(row["rejected"])
    columns["image"].append(image)
    columns["logps"].append(_logps(row))
    extra = decode_extra(row["extra"])
    for name, arrow_type in extra_types.items():
        if name not in columns or name in {"idx", "question", "chosen", "rejected", "image", "logps",
                                           *CLAIM_COLUMNS}:
            continue
        value = extra.get(name)
        if arrow_type == pa.string() and value is not None and not isinstance(value, str):
            value = json.dumps(value, default=str)
        columns[name].append(value)


def _logps(row: dict) -> str | None:
    if row["chosen_per_token"] is None or row["rejected_per_token"] is None:
        return None
    chosen = np.frombuffer(row["chosen_per_token"], "<f4").tolist()
    rejected = np.frombuffer(row["rejected_per_token"], "<f4").tolist()
    return json.dumps([row["chosen_logp"], row["chosen_avg_logp"], chosen,
                       row["rejected_logp"], row["rejected_avg_logp"], rejected])
