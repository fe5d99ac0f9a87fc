"""What tests and benchmarks share that the package itself does not use: the GPT-NeoX tokenizer shipped
under tests/data, and the English form the seed-era tests and the benchmarks time."""

from __future__ import annotations

from pathlib import Path

from mi_bridge.models.language import Language, english_language


def pythia_language(tokenizer) -> Language:
    """The original English form (``lives-in``), which the benchmarks and the seed-era tests time."""
    return english_language(tokenizer, "lives-in")


def load_neox_tokenizer(path: Path):
    """The GPT-NeoX tokenizer from a ``tokenizer.json`` file, as a Hugging Face fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
