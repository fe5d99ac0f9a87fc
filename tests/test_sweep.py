"""``python -m mi_bridge.sweep``: the grid, a toy sweep on a local two-CPU Ray instance (loopback only)
with a worker killed mid-grid, resuming without recomputing, and a cell equal to ``mi_bridge.run``."""

import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from mi_bridge import grid, sweep, sweep_summary
from mi_bridge.config import ExperimentConfig
from mi_bridge.errors import UserError
from mi_bridge.run import main as run_main
from tests.conftest import once_per_ci

TINY = ["--n-items", "40", "--seeds", "1", "--alphas", "1", "--n-bootstrap", "200", "--no-site-scan"]
GRID = ["--receiver-layer", "0-3"]


def test_layer_lists_and_ranges():
    assert grid.parse_layers("0-3,8") == [0, 1, 2, 3, 8]
    assert grid.parse_layers("4,0,4") == [4, 0]
    assert grid.parse_names("pythia-160m, pythia-410m") == ["pythia-160m", "pythia-410m"]
    for bad in ("3-1", "a", "1-", "0,,2"):
        with pytest.raises(UserError):
            grid.parse_layers(bad)
    cells = grid.expand(
        ExperimentConfig(), {"receiver_layer": [0, 1], "position": ["slot", "final"]}, Path("/s")
    )
    assert len({c.name for c in cells}) == 4
    assert {c.config.out for c in cells} == {f"/s/{c.name}" for c in cells}
    assert len({c.pair_key() for c in cells}) == 1  # one loaded pair serves the whole grid


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--receiver-layer", "3-1"], "empty layer range"),
        (["--position", "slot,side"], "unknown position"),
        (["--max-retries", "-1"], "--max-retries"),
    ],
)
def test_bad_grid_is_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "sweep"
    assert sweep.main([*flags, "--local", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_ray_flag_without_ray_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert sweep.main([*GRID, "--out", str(tmp_path / "sweep")]) == 2
    assert "pip install -e '.[ray]'" in capsys.readouterr().err


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "nonsense"])
def test_an_address_without_a_cluster_is_one_line_and_writes_nothing(tmp_path, capsys, address):
    """Ray itself retries a dead address for minutes with warnings; the sweep says so at once."""
    out = tmp_path / "sweep"
    address = address.format(port=closed_port())
    assert sweep.main([*GRID, "--address", address, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--address" in err or "no Ray cluster answers" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_failing_cell_is_recorded_and_the_exit_code_says_so(tmp_path):
    out = tmp_path / "sweep"
    assert sweep.main([*TINY, "--receiver-layer", "9", "--local", "--out", str(out)]) == 1
    (row,) = cells(out).values()
    assert row["status"] == "failed" and "receiver layer 9" in row["error"]
    assert not (out / row["name"]).exists()  # nothing half-written


def test_a_sweep_folder_of_another_config_is_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    (cell,) = grid.expand(ExperimentConfig(n_items=40, receiver_layer=0), {}, out)
    Path(cell.config.out).mkdir(parents=True)
    (Path(cell.config.out) / "config.json").write_text(json.dumps(cell.config.to_dict()))
    (Path(cell.config.out) / "results.json").write_text("{}")
    assert sweep.main(["--n-items", "60", "--receiver-layer", "0", "--local", "--out", str(out)]) == 2
    assert "another configuration" in capsys.readouterr().err


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray instance with two CPUs, its workers pointed at a private activation cache."""
    pytest.importorskip("ray")
    import ray

    cache = tmp_path_factory.mktemp("cache")
    before = os.environ.get("MI_BRIDGE_CACHE")
    os.environ["MI_BRIDGE_CACHE"] = str(cache)
    assert sweep.start_ray(None, num_cpus=2)
    yield cache
    ray.shutdown()
    if before is None:
        del os.environ["MI_BRIDGE_CACHE"]
    else:
        os.environ["MI_BRIDGE_CACHE"] = before


def worker_running_a_cell() -> int | None:
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        if (process.info["cmdline"] or [""])[0] == "ray::PairWorker.run":
            return process.pid
    return None


@pytest.fixture(scope="module")
def killed_sweep(local_ray, tmp_path_factory):
    """The toy grid with one worker SIGKILLed while it runs a cell."""
    out = tmp_path_factory.mktemp("sweeps") / "killed"
    codes = []
    thread = threading.Thread(target=lambda: codes.append(sweep.main([*TINY, *GRID, "--out", str(out)])))
    thread.start()
    killed = None
    while thread.is_alive() and killed is None:
        killed = worker_running_a_cell()
        time.sleep(0.05)
    assert killed is not None, "no worker was seen running a cell"
    os.kill(killed, signal.SIGKILL)
    thread.join()
    return out, codes


def cells(out: Path) -> dict:
    return {c["name"]: c for c in json.loads((out / "sweep.json").read_text())["cells"]}


@once_per_ci
@pytest.mark.slow
def test_a_killed_worker_costs_one_retry_and_the_grid_completes(killed_sweep):
    out, codes = killed_sweep
    assert codes == [0]
    rows = cells(out)
    assert len(rows) == 4 and all(row["status"] == "done" for row in rows.values())
    assert sorted(row["attempts"] for row in rows.values()) == [1, 1, 1, 2]
    for name, row in rows.items():
        results = json.loads((out / name / "results.json").read_text())
        assert row["numbers"] == sweep.key_numbers(results, "split")
        assert row["numbers"]["layers"]["receiver"] == int(name.split("-L")[-1].split("-")[0])
    assert {f"heatmap_{m}.png" for m in sweep_summary.METRICS} <= {p.name for p in out.iterdir()}


def snapshot(folder: Path) -> dict:
    return {
        p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes())
        for p in folder.rglob("*")
        if p.is_file()
    }


@once_per_ci
@pytest.mark.slow
def test_a_rerun_recomputes_only_the_unfinished_cell(killed_sweep, local_ray):
    out, _ = killed_sweep
    lost = sorted(cells(out))[1]
    kept = {name: snapshot(out / name) for name in cells(out) if name != lost}
    before = json.loads((out / lost / "results.json").read_text())
    shutil.rmtree(out / lost)  # as if the sweep was stopped before this cell was published
    cached = {p.relative_to(local_ray): p.stat().st_size for p in local_ray.rglob("*.safetensors")}
    assert cached  # the first sweep filled the cache
    assert sweep.main([*TINY, *GRID, "--out", str(out)]) == 0
    rows = cells(out)
    assert rows[lost]["attempts"] == 1 and (out / lost / "results.json").is_file()
    assert all(rows[name]["attempts"] == 0 for name in kept)  # skipped, not recomputed
    assert {name: snapshot(out / name) for name in kept} == kept  # same bytes, same mtimes
    # no new capture: the redone cell read every state from the cache
    assert {p.relative_to(local_ray): p.stat().st_size for p in local_ray.rglob("*.safetensors")} == cached
    after = json.loads((out / lost / "results.json").read_text())
    assert {**after, "versions": None} == {**before, "versions": None}  # another worker, the same numbers


@once_per_ci
@pytest.mark.slow
def test_a_cell_equals_mi_bridge_run_bit_for_bit(killed_sweep, tmp_path):
    out, _ = killed_sweep
    name = sorted(cells(out))[2]
    config = json.loads((out / name / "config.json").read_text())
    single = tmp_path / "single"
    assert run_main([*TINY, "--receiver-layer", str(config["receiver_layer"]), "--out", str(single)]) == 0
    cell, alone = (json.loads((folder / "results.json").read_text()) for folder in (out / name, single))
    for results in (cell, alone):
        del results["config"]["out"], results["versions"]  # where and with what it ran, not what it found
    assert cell == alone
