"""What a stage is, and the plain data that flows between the runner, the stages and the store.

Rows are NamedTuples: the store builds hundreds of thousands of them per batch on the
pairing stages, and a tuple is several times cheaper to make than a frozen dataclass.

A stage is a small object that declares what it reads, which settings change its result,
and which model (if any) it needs; its ``process`` is a plain function of a batch. It never
opens the database and never decides what to skip: the runner does both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

# What a stage may read. The runner fills a Batch with exactly these.
READS = ("records", "samples", "logprobs", "rewards", "facts", "questions", "judgments", "scores")


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

    ROWS = ("samples", "logprobs", "rewards", "pairs", "facts", "questions", "judgments", "scores", "notes")

    def merge(self, other: Outputs) -> None:
        for name in self.ROWS:
            getattr(self, name).extend(getattr(other, name))
        self.failed.update(other.failed)
        self.tokens += other.tokens


class Stage(Protocol):
    name: str
    after: tuple[str, ...]  # stages whose results this one reads
    reads: tuple[str, ...]
    scope: str  # "record" (per record, in batches) or "run" (over the whole run at once)
    model_role: str | None  # which model it needs ("instruct", "reward"), or None

    def settings(self, config: Any) -> dict: ...

    def batch_size(self, config: Any) -> int: ...

    def open_model(self, config: Any) -> Any: ...

    def process(self, batch: Batch, model: Any, config: Any) -> Outputs: ...
