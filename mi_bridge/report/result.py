"""The one result type of every entry point. The transfer experiment (either protocol) and each
hypothesis script in ``analyses/`` return a :class:`Result`: a hypothesis, a verdict with the numbers
behind it, tables and the data. ``report.render_result`` shows it in the terminal and
``report.result_markdown`` writes it to report.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

HYPOTHESIS_VERDICTS = ("supported", "not supported", "inconclusive")
"""An analysis's verdict on its hypothesis."""
TRANSFER_VERDICTS = ("transfer helps", "no transfer", "untestable here")
"""A transfer run's verdict (either protocol): what happened, not whether a negative result held."""
VERDICTS = HYPOTHESIS_VERDICTS + TRANSFER_VERDICTS


@dataclass
class Table:
    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    marks: list[tuple[int, ...]] | None = None
    """Per row and cell: +1 / -1 where that cell's effect is above / below its reference with its CI
    excluding it and its p surviving the Holm correction of its family, else 0 (green or red in the
    terminal, bold in markdown)."""
    alerts: list[bool] | None = None
    """Rows to stand out in the terminal (a stage where the signal is lost, an invalid task)."""
    in_terminal: bool = True
    """False: in report.md only (the terminal names it in one line), unless the user asks for everything."""
    terminal_columns: tuple[int, ...] | None = None
    """The columns the terminal shows (default all; report.md always has every column)."""


@dataclass
class Result:
    name: str
    hypothesis: str
    verdict: str
    """One of VERDICTS: an analysis's ``supported``, ``not supported``, ``inconclusive``; a transfer
    run's ``transfer helps``, ``no transfer``, ``untestable here``."""
    explanation: str
    """The numbers and CIs behind the verdict, in one paragraph."""
    tables: list[Table]
    data: dict
    """Everything the figure and results.json need (plain JSON types)."""
    parts: dict | None = None
    """The verdict in three parts, where a result has them: ``result`` and ``why`` (text) and ``next``
    (a list of ``{"command", "why"}``); ``explanation`` then holds the same as one text."""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, not {self.verdict!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def withheld(result: Result, reason: str, advice: str = "") -> Result:
    """``result`` with its verdict withheld (``inconclusive``, or ``untestable here`` for a transfer
    verdict), saying why and what it would have read."""
    withheld_label = "untestable here" if result.verdict in TRANSFER_VERDICTS else "inconclusive"
    if result.verdict == withheld_label:
        return result
    note = f" {reason}; it would otherwise read '{result.verdict}'." + (f" {advice}" if advice else "")
    return Result(
        result.name, result.hypothesis, withheld_label, result.explanation + note, result.tables, result.data
    )
