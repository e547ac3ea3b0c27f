"""The divide_and_conquer columns: each answer's score and its claims, ``chosen_score``,
``rejected_score`` and ``chosen_claims`` / ``rejected_claims``, a list of
``{fact, question, p_yes, p_no, true}`` (TRL ignores columns it does not know).

A column set, not a format: this module defines no ``FORMAT``."""

from __future__ import annotations

import pyarrow as pa

from ._arrow import ColumnSet, value_feature

CLAIMS_TYPE = pa.list_(pa.struct([pa.field("fact", pa.string()), pa.field("question", pa.string()),
                                  pa.field("p_yes", pa.float64()), pa.field("p_no", pa.float64()),
                                  pa.field("true", pa.bool_())]))
_CLAIM_FEATURE = {"_type": "List", "feature": {
    "fact": value_feature(pa.string()), "question": value_feature(pa.string()),
    "p_yes": value_feature(pa.float64()), "p_no": value_feature(pa.float64()),
    "true": value_feature(pa.bool_())}}


def _values(store, row: dict) -> dict:
    values = {}
    for side in ("chosen", "rejected"):
        answer = row[f"{side}_idx"]
        values[f"{side}_score"] = store.score_of(row["rid"], answer)
        values[f"{side}_claims"] = [
            {"fact": f, "question": q, "p_yes": py, "p_no": pn, "true": None if py is None else py > pn}
            for f, q, py, pn in store.claims_of(row["rid"], answer)]
    return values


CLAIMS = ColumnSet(
    name="claims",
    fields=(("chosen_score", pa.int64()), ("rejected_score", pa.int64()),
            ("chosen_claims", CLAIMS_TYPE), ("rejected_claims", CLAIMS_TYPE)),
    features={"chosen_score": value_feature(pa.int64()), "rejected_score": value_feature(pa.int64()),
              "chosen_claims": _CLAIM_FEATURE, "rejected_claims": _CLAIM_FEATURE},
    values=_values,
)
