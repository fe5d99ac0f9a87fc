"""The seed paper's released task: its eval set (verified by SHA-256), its prompt formats and the
published table, all shipped as package data in ``mi_bridge/data/seed_paper/`` (Apache-2.0).

Prompt formats, as in the paper's code (``h1_final_runner.py``, ``nl_relay.py``):
both models read ``Context: {context}\\nQ: {question}\\nA:``; the text relay's sender reads
``{context}\\n\\nKey facts:`` and the receiver then ``{relay}\\nQ: {question}\\nA:``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mi_bridge.errors import UserError

EVAL_SHA256 = "504e077cf17433e22967c86e98d321532d4e803dbe24d96af14c7e8ecdd0dcbb"
"""SHA-256 of ``clean_eval.jsonl`` as stated in the paper's audit manifest."""
PAPER_SEEDS = (42, 123, 456)
"""The paper's seeds; seed index i >= 3 uses 456 + i - 2 (documented in docs/seed_protocol.md)."""
MAX_PROMPT_TOKENS = 256
"""The paper's tokenizer truncation (``max_length=256``), for prompts and fit texts."""


def data_dir() -> Path:
    return Path(str(resources.files("mi_bridge") / "data" / "seed_paper"))


@dataclass(frozen=True)
class SeedItem:
    id: str
    context: str
    question: str
    answer: str
    hops: int


def paper_seed(index: int) -> int:
    return PAPER_SEEDS[index] if index < len(PAPER_SEEDS) else PAPER_SEEDS[-1] + index - len(PAPER_SEEDS) + 1


def load_eval(path: Path | None = None, expected_sha256: str = EVAL_SHA256) -> list[SeedItem]:
    """The eval items, after checking the file's SHA-256 against the released one."""
    path = data_dir() / "clean_eval.jsonl" if path is None else path
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read the seed eval set {path}: {err.strerror or err}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise UserError(
            f"seed eval set {path} has SHA-256 {digest[:12]}…, not the released {expected_sha256[:12]}…: "
            "the file is damaged or replaced"
        )
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    return [
        SeedItem(r["clean_eval_id"], r["context"], r["question"], str(r["answer"]), int(r["hops"]))
        for r in rows
    ]


def load_published() -> dict:
    """The published table (``published.json``) with its source note."""
    return json.loads((data_dir() / "published.json").read_text())


def prompt(item: SeedItem) -> str:
    """What both models read in every condition but the text relay and the oracle."""
    return f"Context: {item.context}\nQ: {item.question}\nA:"


def relay_sender_prompt(item: SeedItem) -> str:
    return f"{item.context}\n\nKey facts:"


def relay_receiver_prompt(relay: str, item: SeedItem) -> str:
    return f"{relay}\nQ: {item.question}\nA:"


def answer_fact(item: SeedItem) -> str:
    """The context sentence that states the gold answer (the last hop, resolved).

    The released items name no intermediate entity, and the receiver already reads the whole context,
    so writing a bridge entity into it would add nothing. The oracle instead restates the answer-bearing
    fact right before ``A:``. It holds the answer itself: it shows whether this decoding and metric can
    register a solved item at all, not what a sender could add."""
    sentences = re.split(r"(?<=[.!?])\s+", item.context.strip())
    for sentence in sentences:
        if item.answer.lower() in sentence.lower():
            return sentence
    return item.context


def oracle_prompt(item: SeedItem) -> str:
    return f"Context: {item.context}\nQ: {item.question}\nFact: {answer_fact(item)}\nA:"


def eval_contexts_corpus(items: list[SeedItem]) -> list[str]:
    """The offline default fit corpus: the eval contexts themselves (no questions, no answers)."""
    return [item.context for item in items]


def load_fit_corpus(spec: str | None, items: list[SeedItem], n_texts: int) -> tuple[list[str], str]:
    """Up to ``n_texts`` non-empty texts, and a description of where they came from.

    ``spec`` is None (the eval contexts), a local text file (one text per non-empty line), or a Hugging
    Face dataset ``name[:config]`` read through ``datasets`` (its train split's ``text`` column)."""
    if spec is None:
        return eval_contexts_corpus(items)[
            :n_texts
        ], "eval contexts (offline default; not the paper's corpus)"
    path = Path(spec)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read fit corpus {path}: {err}") from None
        texts = [line.strip() for line in lines if line.strip()][:n_texts]
        if not texts:
            raise UserError(f"fit corpus {path} holds no text")
        return texts, f"file {path}"
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"fit corpus {spec!r} is not a file, and reading a Hugging Face dataset needs the 'datasets' "
            "package (pip install datasets)"
        ) from None
    name, _, config = spec.partition(":")
    try:
        dataset = datasets.load_dataset(name, config or None, split="train", streaming=True)
        texts = []
        for row in dataset:
            text = str(row.get("text", "")).strip()
            if text and not text.startswith("="):  # WikiText section headings are not texts
                texts.append(text)
            if len(texts) >= n_texts:
                break
    except Exception as err:  # datasets raises many types (network, missing config, ...)
        raise UserError(f"cannot load fit corpus {spec!r} through datasets: {err}") from None
    if not texts:
        raise UserError(f"fit corpus {spec!r} has no 'text' rows in its train split")
    return texts, f"Hugging Face dataset {spec}"
