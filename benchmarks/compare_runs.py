"""Are two run folders' numbers the same? Bit for bit, number by number.

    python -m benchmarks.compare_runs OLD NEW [--out FILE]

OLD and NEW are run folders of ``mi_bridge.run`` or ``mi_bridge.analyses`` (a folder whose
subfolders are run folders is compared subfolder by subfolder). Every number in ``results.json`` is
matched by its key path; lists of records with a ``name`` are matched by name, so conditions that only
one side has (controls added later) are counted as unmatched, not compared by position. Provenance
(config, options, versions, identities) is not compared. A refactor that claims "same numbers" shows
here that every matched number is identical.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

PROVENANCE = {"config", "options", "versions", "models", "extra"}


def numbers(value, path: tuple = ()) -> dict[tuple, float]:
    """Every numeric leaf, keyed by its path (records in a list keyed by their ``name``)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return {}
    if isinstance(value, int | float):
        return {path: float(value)}
    if isinstance(value, dict):
        return {
            key: number
            for k, v in value.items()
            if k not in PROVENANCE
            for key, number in numbers(v, (*path, k)).items()
        }
    if isinstance(value, list):
        named = all(isinstance(v, dict) and "name" in v for v in value) and value
        return {
            key: number
            for i, v in enumerate(value)
            for key, number in numbers(v, (*path, v["name"] if named else i)).items()
        }
    return {}


def run_folders(root: Path) -> dict[str, Path]:
    """The run folder itself, or its subfolders that are run folders."""
    if (root / "results.json").exists():
        return {".": root}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "results.json").exists()}


def compare(old: Path, new: Path) -> dict:
    per_folder = {}
    old_runs, new_runs = run_folders(old), run_folders(new)
    for name in sorted(old_runs.keys() & new_runs.keys()):
        a = numbers(json.loads((old_runs[name] / "results.json").read_text()))
        b = numbers(json.loads((new_runs[name] / "results.json").read_text()))
        shared = a.keys() & b.keys()
        identical = sum(1 for k in shared if a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])))
        differences = [abs(a[k] - b[k]) for k in shared if a[k] != b[k] and not math.isnan(a[k] - b[k])]
        per_folder[name] = {
            "compared": len(shared),
            "bit_identical": identical,
            "max_abs_difference": max(differences, default=0.0),
            "only_old": len(a.keys() - b.keys()),
            "only_new": len(b.keys() - a.keys()),
            "first_differences": [
                {"path": "/".join(map(str, k)), "old": a[k], "new": b[k]}
                for k in sorted(shared, key=str)
                if a[k] != b[k]
            ][:5],
        }
    return {
        "old": str(old),
        "new": str(new),
        "folders": per_folder,
        "missing": sorted(old_runs.keys() ^ new_runs.keys()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--out", type=Path, help="also write the comparison as JSON")
    args = parser.parse_args(argv)
    result = compare(args.old, args.new)
    for name, r in result["folders"].items():
        print(
            f"{name}: {r['bit_identical']}/{r['compared']} numbers bit-identical, "
            f"max |difference| {r['max_abs_difference']:.3g}; only old {r['only_old']}, only new {r['only_new']}"
        )
    if result["missing"]:
        print(f"run folders on one side only: {', '.join(result['missing'])}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    same = all(r["bit_identical"] == r["compared"] for r in result["folders"].values())
    return 0 if same and not result["missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
