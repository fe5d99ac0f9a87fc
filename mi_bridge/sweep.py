"""``python -m mi_bridge.sweep``: a grid of runs on Ray (or in process with ``--local``), resumable.

Takes the flags of ``mi_bridge.run``; the models, revisions, position and target may be lists, the layers
lists or ranges. Every cell writes the run folder ``mi_bridge.run`` writes for its config, under the sweep
folder (default ``runs/sweep-<pair>-<hash of the grid and settings>``); rerunning the same command resumes
it, skipping the cells already published. The sweep folder also gets ``grid.json`` (what it is a sweep of:
a sweep of another grid or settings is refused there, unless --overwrite replaces it), ``sweep.json`` (the
grid and every cell's key numbers), ``report.md`` and heatmaps (sender layer x receiver layer).

Examples:
    python -m mi_bridge.sweep --pair toy --receiver-layer 0-3 --sender-layer 0-2     # local Ray
    python -m mi_bridge.sweep --pair toy --receiver-layer 0-3 --local                # in process
    python -m mi_bridge.sweep --pair pythia --receiver-layer 0-23 --address auto     # join a cluster
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mi_bridge import cli, grid
from mi_bridge.config import ExperimentConfig, current_record
from mi_bridge.core.device import AUTO, device_type
from mi_bridge.core.progress import console
from mi_bridge.errors import UserError
from mi_bridge.files import holds_something, remove_folder, write_text_atomic
from mi_bridge.protocols.base import get_protocol
from mi_bridge.run_folder import same_run, short_hash
from mi_bridge.sweep_summary import write_summary

WORKER_ENV = ("MI_BRIDGE_CACHE", "MI_BRIDGE_CACHE_MAX_GB", "HF_HOME", "HF_HUB_OFFLINE")
"""Environment variables handed to the Ray workers when the driver sets them (where the caches are)."""
RAY_MISSING = "Ray is not installed: pip install -e '.[ray]' (or run the cells in process with --local)"


def build_parser() -> cli.OneLineParser:
    description, _, more = __doc__.partition("\n\n")
    parser = cli.OneLineParser(
        prog="python -m mi_bridge.sweep",
        description=description,
        epilog=more,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, help="the base config from a config.json (other flags override it)"
    )
    where = "Sweep folder; default runs/sweep-<pair>-<hash of the grid and settings> (the same command resumes it)"
    cli.add_config_flags(parser, lists=grid.grid_fields(), helps={"out": where})
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached activations")
    parser.add_argument("--local", action="store_true", help="run the cells in this process, without Ray")
    parser.add_argument("--address", help="join this Ray cluster (e.g. auto or ray://host:10001)")
    parser.add_argument(
        "--cpus-per-worker",
        type=int,
        default=1,
        help="CPUs each Ray worker (one loaded pair) takes (default: 1)",
    )
    parser.add_argument(
        "--max-retries", type=int, default=2, help="reruns of a cell whose worker died (default: 2)"
    )
    cli.add_overwrite_flag(parser, "sweep folder (by default a rerun of the same sweep resumes it)")
    return parser


@dataclass
class Outcome:
    """One cell's state in the sweep."""

    status: str = "pending"
    """``pending``, ``done`` or ``failed``."""
    attempts: int = 0
    """Times the cell was started (a worker that died costs one)."""
    numbers: dict = field(default_factory=dict)
    error: str | None = None


def key_numbers(results: dict, protocol: str) -> dict:
    """A cell's numbers in sweep.json and its heatmaps, as its protocol reads its results."""
    return get_protocol(protocol).sweep_numbers(results)


def run_cell(config: ExperimentConfig, pair, use_cache: bool) -> dict:
    """One cell on a loaded pair: the same code path as ``mi_bridge.run``, its run folder published; its
    key numbers."""
    from mi_bridge.run import compute, publish

    run = compute(config, pair, use_cache)
    publish(run, Path(config.out))
    return key_numbers(run.results, config.protocol)


class PairWorker:
    """Holds one loaded model pair and runs the cells that share it (a Ray actor)."""

    def __init__(self, config: dict, gpu: bool = False):
        from mi_bridge.models.loading import load_pair

        config = ExperimentConfig.from_dict(config)
        # An actor with a GPU sees only that one (Ray sets CUDA_VISIBLE_DEVICES), as cuda:0 whatever the
        # cell's --device said; the cell's config keeps what was asked, its extra.device what ran.
        self.pair = load_pair(replace(config, device="cuda") if gpu else config)

    def run(self, config: dict, use_cache: bool) -> dict:
        return run_cell(ExperimentConfig.from_dict(config), self.pair, use_cache)


def finished(cell: grid.Cell) -> dict | None:
    """The results of a cell whose run folder is published, else None; a folder of another config is a
    UserError (the sweep folder belongs to another sweep)."""
    folder = Path(cell.config.out)
    if not (folder / "results.json").is_file():
        return None
    if not same_run(json.loads((folder / "config.json").read_text()), cell.config):
        raise UserError(
            f"{folder} holds a run of another configuration; choose another sweep folder with --out"
        )
    return json.loads((folder / "results.json").read_text())


def manifest(base: ExperimentConfig, values: dict) -> dict:
    """What a sweep folder is a sweep of (``grid.json``, and the head of ``sweep.json``)."""
    config = {k: v for k, v in base.to_dict().items() if k not in (*grid.grid_fields(), "out", "extra")}
    return json.loads(json.dumps({"grid": values, "config": config}))  # as read back from JSON


def check_sweep_folder(folder: Path, wanted: dict, overwrite: bool) -> None:
    """A sweep resumes in its own folder only: one that holds another grid or config (by its grid.json,
    or sweep.json for a sweep from before grid.json) is refused, unless ``overwrite`` replaces it."""
    if overwrite or not holds_something(folder):
        return
    for name in ("grid.json", "sweep.json"):
        if (folder / name).is_file():
            recorded = json.loads((folder / name).read_text())
            config = recorded.get("config")
            if isinstance(config, dict):  # a sweep of an earlier version recorded every protocol's fields
                config = current_record(config)[0]
            if {"grid": recorded.get("grid"), "config": config} == wanted:
                return
            break
    raise UserError(
        f"sweep folder {folder} holds a sweep of another configuration (grid or settings differ); "
        "pass --overwrite to replace it, or choose another --out"
    )


def run_local(pending: list[grid.Cell], outcomes: dict, use_cache: bool, bar) -> None:
    """Cells in this process, one pair loaded per group of cells; a failing cell does not stop the rest."""
    from mi_bridge.models.loading import load_pair

    pair, key = None, None
    for cell in sorted(pending, key=lambda c: c.pair_key()):
        outcome = outcomes[cell.name]
        outcome.attempts += 1
        bar(running=1)
        try:
            if cell.pair_key() != key:
                pair, key = None, None  # free the previous pair first
                pair, key = load_pair(cell.config), cell.pair_key()
            outcome.numbers, outcome.status = run_cell(cell.config, pair, use_cache), "done"
        except Exception as err:  # noqa: BLE001 -- one cell's failure is recorded, the grid goes on
            outcome.status, outcome.error = "failed", f"{type(err).__name__}: {err}"
        bar(running=0)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """One line instead of Ray's minutes of connection retries when nothing listens at ``address``
    (``host:port`` or ``ray://host:port``; ``auto`` is Ray's own lookup, which fails fast and is
    turned into one line by :func:`start_ray`)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r}: expected auto, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise UserError(
            f"no Ray cluster answers at {address} ({err.strerror or err}); start one with "
            "`ray start --head`, or drop --address for a local instance"
        ) from None


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join ``address`` or start a local instance (loopback only, no dashboard); False if Ray was
    already initialized by the caller."""
    try:
        import ray
    except ImportError:
        raise UserError(RAY_MISSING) from None
    if ray.is_initialized():
        return False
    env = {"env_vars": {name: os.environ[name] for name in WORKER_ENV if name in os.environ}}
    if address:
        try:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        except ConnectionError as err:
            raise UserError(f"cannot join the Ray cluster at {address}: {str(err).splitlines()[0]}") from None
    else:
        ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            runtime_env=env,
            log_to_driver=False,
        )
    return True


def actor_gpus(device: str, cluster_gpus: float) -> int:
    """GPUs per Ray actor, one or none: a CUDA ``--device`` takes one, ``auto`` takes one wherever the
    cluster has GPUs. A CUDA device on a cluster without GPUs is bad input (its actors would wait forever)."""
    if device == AUTO:
        return int(cluster_gpus > 0)
    if device_type(device) != "cuda":
        return 0
    if cluster_gpus < 1:
        raise UserError(f"--device {device}: the Ray cluster has no GPU (use --device cpu, or auto)")
    return 1


def run_ray(
    pending: list[grid.Cell], outcomes: dict, use_cache: bool, bar, cpus_per_worker: int, max_retries: int
) -> None:
    """Cells on Ray actors, one loaded pair per actor. A worker that dies costs its cell one attempt
    (retried up to ``max_retries`` times, then failed); an error inside a cell fails that cell only."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    resources = ray.cluster_resources()
    gpu = actor_gpus(pending[0].config.device, float(resources.get("GPU", 0)))
    slots = int(resources.get("GPU", 0)) if gpu else int(resources.get("CPU", 1) // cpus_per_worker)
    slots = max(1, min(slots, len(pending)))
    worker = ray.remote(PairWorker).options(num_cpus=0 if gpu else cpus_per_worker, num_gpus=gpu)
    queue = deque(sorted(pending, key=lambda c: c.pair_key()))
    idle: list[tuple[tuple, object]] = []
    running: dict = {}
    while queue or running:
        while queue and len(running) < slots:
            cell = queue.popleft()
            match = [i for i, (key, _) in enumerate(idle) if key == cell.pair_key()]
            if match:
                _, actor = idle.pop(match[0])
            else:
                if len(idle) + len(running) >= slots:
                    ray.kill(idle.pop(0)[1])  # its slot goes to another pair
                actor = worker.remote(cell.config.to_dict(), bool(gpu))
            outcomes[cell.name].attempts += 1
            running[actor.run.remote(cell.config.to_dict(), use_cache)] = (cell, actor)
            bar(running=len(running))
        (ref,), _ = ray.wait(list(running), num_returns=1)
        cell, actor = running.pop(ref)
        outcome = outcomes[cell.name]
        try:
            outcome.numbers, outcome.status = ray.get(ref), "done"
            idle.append((cell.pair_key(), actor))
        except RayActorError as err:  # the worker died: retry the cell on a fresh one
            if outcome.attempts <= max_retries:
                queue.appendleft(cell)
            else:
                outcome.status, outcome.error = "failed", f"worker died {outcome.attempts} times: {err}"
        except RayTaskError as err:
            cause = err.cause if err.cause is not None else err
            outcome.status, outcome.error = "failed", f"{type(cause).__name__}: {cause}"
            idle.append((cell.pair_key(), actor))
        bar(running=len(running))
    for _, actor in idle:
        ray.kill(actor)


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = build_parser().parse_args(argv)
        if args.local and (args.address or args.cpus_per_worker != 1):
            raise UserError("--local runs in this process: --address and --cpus-per-worker are Ray flags")
        if args.cpus_per_worker < 1 or args.max_retries < 0:
            raise UserError("--cpus-per-worker must be >= 1 and --max-retries >= 0")
        texts = {name: getattr(args, name) for name in grid.grid_fields()}
        base = cli.config_from_args(argparse.Namespace(**{**vars(args), **dict.fromkeys(texts)}))
        varied = (*grid.SHARED_GRID_FIELDS, *base.options.grid_fields)
        elsewhere = [name for name, text in texts.items() if text is not None and name not in varied]
        if elsewhere:
            flag = "--" + elsewhere[0].replace("_", "-")
            raise UserError(f"{flag} is not an option of --protocol {base.protocol}")
        record = base.to_dict()
        values = {
            name: grid.parse_values(name, texts[name]) if texts[name] is not None else [record[name]]
            for name in varied
        }
        wanted = manifest(base, values)
        folder = Path(base.out or f"runs/sweep-{base.pair}-{short_hash(wanted)}").resolve()
        cli.check_writable(folder)
        check_sweep_folder(folder, wanted, args.overwrite)
        cells = grid.expand(base, values, folder)
        if not args.local:
            try:
                import ray  # noqa: F401 -- fail before any work when the extra is missing
            except ImportError:
                raise UserError(RAY_MISSING) from None
            if args.address:
                check_reachable(args.address)
        return sweep(cells, values, base, folder, args)

    return cli.one_line_errors(body, "finished cells are kept; rerun the same command to resume")


def sweep(cells: list[grid.Cell], values: dict, base: ExperimentConfig, folder: Path, args) -> int:
    outcomes = {cell.name: Outcome() for cell in cells}
    for cell in cells if not args.overwrite else ():
        results = finished(cell)
        if results is not None:
            outcomes[cell.name] = Outcome("done", numbers=key_numbers(results, cell.config.protocol))
    pending = [cell for cell in cells if outcomes[cell.name].status == "pending"]
    # Ray first: a cluster that cannot be joined is one line, before anything is written
    started_ray = bool(pending) and not args.local and start_ray(args.address)
    if args.overwrite:
        remove_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "grid.json", json.dumps(manifest(base, values), indent=2) + "\n")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("running {task.fields[running]} · failed {task.fields[failed]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("cells", total=len(cells), running=0, failed=0)

        def bar(running: int) -> None:
            counts = Counter(o.status for o in outcomes.values())
            progress.update(
                task, completed=counts["done"] + counts["failed"], running=running, failed=counts["failed"]
            )

        bar(running=0)
        try:
            if pending and args.local:
                run_local(pending, outcomes, not args.no_cache, bar)
            elif pending:
                run_ray(pending, outcomes, not args.no_cache, bar, args.cpus_per_worker, args.max_retries)
        finally:
            write_summary(folder, values, base, cells, outcomes)
            if started_ray:
                import ray

                ray.shutdown()
    counts = Counter(o.status for o in outcomes.values())
    skipped = len(cells) - len(pending)
    console.print(
        f"{counts['done']} of {len(cells)} cells done ({skipped} already done), {counts['failed']} failed; "
        f"sweep folder: {folder}"
    )
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
