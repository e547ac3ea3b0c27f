"""The data browser: one record's image, question, answers with their scores, and its pairs."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from dpo_engine.store import RecordDetail, Store

from .format import clean
from .image import HalfBlockImage


def _answer_table(detail: RecordDetail) -> Table:
    table = Table(expand=True, header_style="bold", pad_edge=False, show_lines=False, box=None)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("answer", ratio=1)
    for a in detail.answers:
        if a.score is not None:
            score = str(a.score)
        elif a.reward is not None:
            score = f"{a.reward[0]:+.3f}"
        else:
            score = "—"
        body = Text(clean(a.text))
        for fact, question, p_yes, p_no in a.claims:
            verdict = "?" if p_yes is None else ("✔" if p_yes > p_no else "✘")
            style = "green" if verdict == "✔" else ("red" if verdict == "✘" else "dim")
            body.append(f"\n  {verdict} ", style=style)
            body.append(clean(question or fact, 120), style="dim")
            if p_yes is not None:
                body.append(f"  yes {p_yes:.2f} · no {p_no:.2f}", style="dim")
        table.add_row(str(a.inner_idx), score, body)
    return table


def _pair_table(detail: RecordDetail) -> Table:
    texts = {a.inner_idx: a.text for a in detail.answers}
    table = Table(expand=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("chosen", ratio=1, style="green")
    table.add_column("rejected", ratio=1, style="red")
    table.add_column("in output", justify="center")
    for chosen, rejected, kept in detail.pairs:
        table.add_row(f"[{chosen}] {clean(texts.get(chosen), 300)}", f"[{rejected}] {clean(texts.get(rejected), 300)}",
                      "yes" if kept else "no")
    return table


def render_record(detail: RecordDetail | None) -> tuple[HalfBlockImage | Text, Group | Text]:
    if detail is None:
        return Text("no record"), Text("")
    head = Text.assemble(("record ", "dim"), (clean(detail.idx or str(detail.rid)), "bold"), "  ",
                         (clean(detail.question, 300), "italic"))
    if not detail.valid:
        head.append(f"\ninvalid: {clean(detail.error)}", style="red")
    parts = [head, Text(f"\n{len(detail.answers)} answers", style="bold"), _answer_table(detail),
             Text(f"\n{len(detail.pairs)} pairs", style="bold")]
    if detail.pairs:
        parts.append(_pair_table(detail))
    return HalfBlockImage(detail.image, width=32), Group(*parts)


class RecordBrowser(Screen):
    """`n`/`p` step through the records that have answers; `escape` goes back."""

    DEFAULT_CSS = """
    RecordBrowser #record-image {
        width: 34;
        height: auto;
        padding: 1 1;
    }
    RecordBrowser #record-body {
        width: 1fr;
        padding: 0 1;
    }
    """
    BINDINGS = [
        Binding("n", "step(1)", "next record"),
        Binding("p", "step(-1)", "previous record"),
        Binding("escape,o", "app.pop_screen", "back"),
    ]

    def __init__(self, db_path, start: int | None = None):
        super().__init__()
        self.db_path = db_path
        self.start = start
        self.rids: list[int] = []
        self.position = 0

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Static(id="record-image")
            with VerticalScroll(id="record-body"):
                yield Static(id="record-text")
        yield Footer()

    def on_mount(self) -> None:
        store = Store(self.db_path, create=False, readonly=True)
        try:
            self.rids = store.record_ids()
        finally:
            store.close()
        if self.start in self.rids:
            self.position = self.rids.index(self.start)
        self._show()

    def action_step(self, delta: int) -> None:
        if self.rids:
            self.position = (self.position + delta) % len(self.rids)
            self._show()

    def _show(self) -> None:
        store = Store(self.db_path, create=False, readonly=True)
        try:
            detail = store.record_detail(self.rids[self.position]) if self.rids else None
        finally:
            store.close()
        image, body = render_record(detail)
        self.query_one("#record-image", Static).update(image)
        self.query_one("#record-text", Static).update(body)
        self.sub_title = f"record {self.position + 1} of {len(self.rids)}" if self.rids else "no records yet"
