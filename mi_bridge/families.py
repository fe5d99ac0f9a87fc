"""Model families: what each ``--pair`` is and supports, as data. Code asks a family what it supports
(its prompt forms, revisions, device splitting, the seed protocol, its default models and layers)
instead of branching on its name; a new family is one entry here (and its loader in ``models``).

A leaf beside the config: it imports nothing of mi_bridge.
"""

from __future__ import annotations

from dataclasses import dataclass

TEMPLATES = ("list", "lives-in")
"""The prompt forms of natural-language pairs (``models.task.TEMPLATES``); the toy pair has its own."""


@dataclass(frozen=True)
class PairFamily:
    name: str
    models: tuple[str | None, str | None]
    """Default sender and receiver (None: the user must name it)."""
    templates: tuple[str, ...] = TEMPLATES
    """Prompt forms it can be asked in; the first is the default."""
    pretrained: bool = True
    """Loaded from a Hugging Face checkpoint: it has revisions, tokenizers, and splits across GPUs."""
    natural_language: bool = True
    """Reads text with a natural-language tokenizer: what the seed protocol's prompts need."""
    n_items: int = 1000
    """Default items per seed."""
    seeds: int = 3
    """Default seeds."""
    last_sender_layer: bool = False
    """Default sender layer: its last (the toy sender resolves hop 1 only in its last block) instead of
    the middle of the stack."""


FAMILIES: dict[str, PairFamily] = {
    family.name: family
    for family in (
        PairFamily(
            "toy",
            ("toy-sender", "toy-receiver"),
            templates=("toy",),
            pretrained=False,
            natural_language=False,
            last_sender_layer=True,
        ),
        PairFamily("pythia", ("pythia-160m", "pythia-410m")),
        PairFamily("smollm2", ("smollm2-135m", "smollm2-135m")),  # one real model in two contexts
        # Two real models of two families (Llama-style, Gemma 3), two tokenizers, depths and widths:
        # the seed paper's cross-model question; the reverse direction by --sender/--receiver.
        # Default sender layer: its last, whose final-position state is the one it unembeds to B (hop 1);
        # SmolLM2's middle layer lacks B (probe at chance, docs/real_model).
        # Its default run is sized to finish within 45 minutes on 2 CPU cores (docs/cross_model.md).
        PairFamily(
            "smollm2-gemma3", ("smollm2-135m", "gemma3-270m"), n_items=400, seeds=2, last_sender_layer=True
        ),
        PairFamily("hf", (None, None)),  # any Hugging Face causal LM, by hub name or local folder
    )
}
PAIRS = tuple(FAMILIES)


def family(name: str) -> PairFamily:
    return FAMILIES[name]
