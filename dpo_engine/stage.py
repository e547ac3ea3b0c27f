"""What a stage is, and the plain data that flows between the runner, the stages and the store.

Rows are NamedTuples: the store builds hundreds of thousands of them per batch on the
pairing stages, and a tuple is several times cheaper to make than a frozen dataclass.

A stage is a small object that declares what it reads, which settings change its result,
and which model role (if any) it needs; its ``process`` is a plain function of a batch. It never
opens the database and never decides what to skip: the runner does both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

class RecordIn(NamedTuple):
    rid: int
    idx: str
    question: str
    image: bytes


class SampleRow(NamedTuple):
    rid: int
    inner_idx: int
    text: str
    n_tokens: int
    n_words: int
    text_hash: int


class LogprobRow(NamedTuple):
    rid: int
    inner_idx: int
    role: str
    n_tokens: int
    sum: float
    avg: float
    per_token: bytes  # float32 little-endian


class RewardRow(NamedTuple):
    rid: int
    inner_idx: int
    sum: float
    avg: float
    min: float | None
    last: float | None


class PairRow(NamedTuple):
    rid: int
    ord: int
    chosen: int  # inner_idx of the chosen answer
    rejected: int


class FactRow(NamedTuple):
    """One fact the split model found in an answer (``ord`` counts from 0 per answer)."""

    rid: int
    inner_idx: int
    ord: int
    text: str


class QuestionRow(NamedTuple):
    """A fact turned into a yes/no check question (suffix included)."""

    rid: int
    inner_idx: int
    ord: int
    text: str


class JudgmentRow(NamedTuple):
    """The labeler's first-token probabilities for one check question."""

    rid: int
    inner_idx: int
    ord: int
    p_yes: float
    p_no: float


class ScoreRow(NamedTuple):
    """divide_and_conquer score of an answer: -(claims judged false)."""

    rid: int
    inner_idx: int
    score: int
    n_claims: int


class NoteRow(NamedTuple):
    """Why a stage produced nothing usable for one answer (kept, counted by ``status``)."""

    stage: str
    rid: int
    inner_idx: int
    reason: str


@dataclass
class Batch:
    rids: list[int]
    records: dict[int, RecordIn] = field(default_factory=dict)
    samples: dict[int, list[SampleRow]] = field(default_factory=dict)
    logprobs: dict[str, dict[int, list[LogprobRow]]] = field(default_factory=dict)
    rewards: dict[int, list[RewardRow]] = field(default_factory=dict)
    facts: dict[int, list[FactRow]] = field(default_factory=dict)
    questions: dict[int, list[QuestionRow]] = field(default_factory=dict)
    judgments: dict[int, list[JudgmentRow]] = field(default_factory=dict)
    scores: dict[int, list[ScoreRow]] = field(default_factory=dict)
    extras: dict[int, dict] = field(default_factory=dict)  # the record's carried input columns

    def subset(self, rids: list[int]) -> Batch:
        """The same inputs restricted to some of the records (to find the one at fault)."""
        keep = set(rids)

        def only(rows: dict) -> dict:
            return {rid: value for rid, value in rows.items() if rid in keep}

        return Batch(list(rids), only(self.records), only(self.samples),
                     {role: only(rows) for role, rows in self.logprobs.items()}, only(self.rewards),
                     only(self.facts), only(self.questions), only(self.judgments), only(self.scores),
                     only(self.extras))


@dataclass
class Outputs:
    """What a batch produced. ``failed`` maps a record to its error; the rest are done."""

    samples: list[SampleRow] = field(default_factory=list)
    logprobs: list[LogprobRow] = field(default_factory=list)
    rewards: list[RewardRow] = field(default_factory=list)
    pairs: list[PairRow] = field(default_factory=list)
    facts: list[FactRow] = field(default_factory=list)
    questions: list[QuestionRow] = field(default_factory=list)
    judgments: list[JudgmentRow] = field(default_factory=list)
    scores: list[ScoreRow] = field(default_factory=list)
    notes: list[NoteRow] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    tokens: int = 0  # tokens generated or scored, for throughput
    split: str = ""  # why the batch ran record by record, when it failed whole (process_contained)

    ROWS = ("samples", "logprobs", "rewards", "pairs", "facts", "questions", "judgments", "scores", "notes")

    def merge(self, other: Outputs) -> None:
        for name in self.ROWS:
            getattr(self, name).extend(getattr(other, name))
        self.failed.update(other.failed)
        self.tokens += other.tokens
        self.split = self.split or other.split


class Stage(Protocol):
    """A step of a pipeline. It names the model role it needs; it never opens a model itself:
    the executor opens the model configured for that role and passes it to ``process``."""

    name: str
    after: tuple[str, ...]  # stages whose results this one reads
    reads: tuple[str, ...]  # Batch fields the runner fills: records, samples, logprobs, ...
    writes: tuple[str, ...]  # output kinds it replaces (the store's OUTPUT_TABLES keys)
    scope: str  # "record" (per record, in batches) or "run" (over the whole run at once)
    model_role: str | None  # which configured model it needs ("instruct", "labeler", ...), or None

    def settings(self, config: Any) -> dict: ...

    def batch_size(self, config: Any) -> int: ...

    def process(self, batch: Batch, model: Any, config: Any) -> Outputs: ...

    # A run-scope stage has ``process_run(pairs, config)`` instead of ``process``; it may also
    # have ``wants_texts(config) -> bool`` to get the pairs' texts in place of their word counts.
