"""``iterate.db``: an iteration's plan (its settings) and one row per round with the step it
is at (see ``dpo_engine.iterate``). Its own small file beside the rounds' work dirs, each of
which has its own ``engine.db``."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ConfigError

ITERATE_DB = "iterate.db"


@dataclass(frozen=True)
class RoundState:
    round: int
    step: str
    instruct: str  # the model this round samples from
    work_dir: str
    model: str  # where this round's trained model goes (once selected: the epoch kept)
    pairs: int | None = None
    records: int | None = None
    seconds: dict = field(default_factory=dict)  # per step, once done



class Rounds:
    """``iterate.db``: the plan (settings) and one row per round with the step it is at."""

    def __init__(self, work: Path, *, create: bool = False, readonly: bool = False):
        path = work / ITERATE_DB
        if not create and not path.is_file():
            raise ConfigError(f"{work} holds no iteration ({ITERATE_DB} is missing)",
                              "start one with `dpo-engine iterate`")
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
        if not readonly:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("CREATE TABLE IF NOT EXISTS plan (id INTEGER PRIMARY KEY CHECK (id = 1),"
                              " settings TEXT NOT NULL, created REAL NOT NULL)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS round (round INTEGER PRIMARY KEY, step TEXT NOT NULL,"
                              " instruct TEXT NOT NULL, work_dir TEXT NOT NULL, model TEXT NOT NULL,"
                              " pairs INTEGER, records INTEGER, seconds TEXT NOT NULL DEFAULT '{}',"
                              " updated REAL NOT NULL)")

    def close(self) -> None:
        self.conn.close()

    def plan(self) -> dict | None:
        row = self.conn.execute("SELECT settings FROM plan").fetchone()
        return json.loads(row[0]) if row else None

    def save_plan(self, settings: dict) -> None:
        self.conn.execute("INSERT INTO plan VALUES (1, ?, ?)", (json.dumps(settings, sort_keys=True), time.time()))

    def rounds(self) -> list[RoundState]:
        return [RoundState(r, step, instruct, wd, model, pairs, records, json.loads(secs))
                for r, step, instruct, wd, model, pairs, records, secs in self.conn.execute(
                    "SELECT round, step, instruct, work_dir, model, pairs, records, seconds FROM round ORDER BY round")]

    def begin(self, state: RoundState) -> None:
        self.conn.execute("INSERT OR IGNORE INTO round VALUES (?, ?, ?, ?, ?, NULL, NULL, '{}', ?)",
                          (state.round, state.step, state.instruct, state.work_dir, state.model, time.time()))

    def advance(self, state: RoundState, step: str, seconds: float, **counts) -> RoundState:
        done = {**state.seconds, state.step: round(seconds, 2)}
        new = replace(state, step=step, seconds=done, **counts)
        self.conn.execute("UPDATE round SET step = ?, model = ?, pairs = ?, records = ?, seconds = ?, updated = ?"
                          " WHERE round = ?", (step, new.model, new.pairs, new.records, json.dumps(done), time.time(),
                                               state.round))
        return new
