"""``python -m mi_bridge.cache``: what the cache holds, and clearing it.

python -m mi_bridge.cache info
python -m mi_bridge.cache clear                 # activations and toy models
python -m mi_bridge.cache clear --activations   # only cached activations
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from mi_bridge import progress
from mi_bridge.toy import cache_root

PARTS = {"activations": "activations", "models": "toy"}


def size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mi_bridge.cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("info", "clear"))
    parser.add_argument("--activations", action="store_true", help="only cached activations")
    parser.add_argument("--models", action="store_true", help="only trained toy models")
    args = parser.parse_args(argv)
    root = cache_root()
    chosen = [name for name in PARTS if getattr(args, name)] or list(PARTS)
    for name in chosen:
        folder = root / PARTS[name]
        n_files, n_bytes = size(folder)
        if args.command == "clear":
            shutil.rmtree(folder, ignore_errors=True)
            progress.console.print(f"cleared {name}: {n_files} files, {n_bytes / 2**20:.1f} MiB ({folder})")
        else:
            progress.console.print(f"{name}: {n_files} files, {n_bytes / 2**20:.1f} MiB ({folder})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
