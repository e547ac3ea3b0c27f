"""The plain, frozen rows that the store's read API returns."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    backend: str | None = None  # the model backend it runs on (None: no model)
    path: str | None = None  # how the model does the stage's work (fast or plain path, and why)


@dataclass(frozen=True)
class StatusSnapshot:
    pipeline: str | None
    records: RecordCounts
    stages: list[StageCounts]
    workers: list[WorkerRow] = field(default_factory=list)
    leases: dict[str, int] = field(default_factory=dict)  # records held now, by holder
    # (stage, idx, reason) of records set aside after deaths of the process (Store.claim)
    set_aside: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class InvalidRecord:
    rid: int
    idx: str | None
    error: str
    source: str


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


@dataclass(frozen=True)
class WorkerRow:
    id: str
    holder: str  # the process that drives it and holds its leases
    host: str | None
    pid: int | None
    device: str | None
    state: str | None  # starting, loading, working, idle, replaced, stopped
    stage: str | None
    started: float | None
    heartbeat: float | None
    items: int = 0
    busy: float = 0.0  # seconds spent on batches

    @property
    def items_per_s(self) -> float | None:
        return self.items / self.busy if self.busy > 0 else None
