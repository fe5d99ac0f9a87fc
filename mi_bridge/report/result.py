"""The one result type of every entry point. The transfer experiment (either protocol) and each
hypothesis script in ``analyses/`` return a :class:`Result`: a hypothesis, a verdict with the numbers
behind it, tables and the data. ``report.render_result`` shows it in the terminal and
``report.result_markdown`` writes it to report.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

VERDICTS = ("supported", "not supported", "inconclusive")


@dataclass
class Table:
    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    marks: list[tuple[int, ...]] | None = None
    """Per row and cell: +1 / -1 where that cell's CI excludes 0 above / below, else 0 (green or red in
    the terminal, bold in markdown)."""
    alerts: list[bool] | None = None
    """Rows to stand out in the terminal (a stage where the signal is lost, an invalid task)."""
    in_terminal: bool = True
    """False: in report.md only (the terminal names it in one line), unless the user asks for everything."""


@dataclass
class Result:
    name: str
    hypothesis: str
    verdict: str
    """One of ``supported``, ``not supported``, ``inconclusive``."""
    explanation: str
    """The numbers and CIs behind the verdict, in one paragraph."""
    tables: list[Table]
    data: dict
    """Everything the figure and results.json need (plain JSON types)."""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, not {self.verdict!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def withheld(result: Result, reason: str, advice: str = "") -> Result:
    """``result`` with its verdict withheld (``inconclusive``), saying why and what it would have read."""
    if result.verdict == "inconclusive":
        return result
    note = f" {reason}; it would otherwise read '{result.verdict}'." + (f" {advice}" if advice else "")
    return Result(
        result.name, result.hypothesis, "inconclusive", result.explanation + note, result.tables, result.data
    )
