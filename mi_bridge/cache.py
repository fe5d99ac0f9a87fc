"""``python -m mi_bridge.cache``: what the cache holds (per model checkpoint), and clearing it.

python -m mi_bridge.cache info
python -m mi_bridge.cache clear                 # activations and toy models
python -m mi_bridge.cache clear --activations   # only cached activations

Cached activations take at most ``MI_BRIDGE_CACHE_MAX_GB`` gigabytes (default 20; 1 GB = 10^9 bytes):
past that, the least recently used files are deleted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from mi_bridge import cli
from mi_bridge.core import progress
from mi_bridge.core.store import max_bytes
from mi_bridge.files import cache_root
from mi_bridge.models.sources.identity import describe

PARTS = {"activations": "activations", "models": "toy"}


def size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def by_checkpoint(folder: Path) -> dict[str, tuple[int, int]]:
    """Files and bytes of cached activations per model checkpoint (each key folder's ``identity.json``)."""
    totals: dict[str, tuple[int, int]] = {}
    keys = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []
    for key in keys:
        try:
            label = describe(json.loads((key / "identity.json").read_text())["model"])
        except (OSError, ValueError, KeyError, TypeError):
            label = "checkpoint not recorded"
        n_files, n_bytes = size(key)
        before = totals.get(label, (0, 0))
        totals[label] = (before[0] + n_files, before[1] + n_bytes)
    return totals


def mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mi_bridge.cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("info", "clear"))
    parser.add_argument("--activations", action="store_true", help="only cached activations")
    parser.add_argument("--models", action="store_true", help="only trained toy models")
    args = parser.parse_args(argv)

    def body() -> int:
        root = cache_root()
        chosen = [name for name in PARTS if getattr(args, name)] or list(PARTS)
        for name in chosen:
            folder = root / PARTS[name]
            n_files, n_bytes = size(folder)
            if args.command == "clear":
                shutil.rmtree(folder, ignore_errors=True)
                progress.console.print(f"cleared {name}: {n_files} files, {mib(n_bytes)} ({folder})")
                continue
            cap = f", cap {max_bytes() / 1e9:g} GB (MI_BRIDGE_CACHE_MAX_GB)" if name == "activations" else ""
            progress.console.print(f"{name}: {n_files} files, {mib(n_bytes)} ({folder}){cap}", soft_wrap=True)
            if name == "activations":
                for label, (files, total) in sorted(by_checkpoint(folder).items()):
                    progress.console.print(
                        f"  {label}: {files} files, {mib(total)}", highlight=False, soft_wrap=True
                    )
        return 0

    return cli.one_line_errors(body, "files not yet removed are kept")


if __name__ == "__main__":
    sys.exit(main())
