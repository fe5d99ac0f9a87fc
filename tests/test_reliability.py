"""Crash safety, cache integrity, determinism, bad input and fuzzing (issue: reliability and security)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from mi_bridge.bridges.ridge import LinearBridge
from mi_bridge.cli import config_from_args
from mi_bridge.config import ExperimentConfig
from mi_bridge.errors import UserError
from mi_bridge.files import write_atomic
from mi_bridge.models.toy import TOY_MODELS
from mi_bridge.run import build_parser, main
from tests.conftest import once_per_ci, tl3_only

TINY = ["--n-items", "40", "--seeds", "1", "--alphas", "1", "--n-bootstrap", "200"]
RESULT_KEYS = ("validity", "bridge", "conditions", "verdict")


def results_of(folder: Path) -> dict:
    data = json.loads((folder / "results.json").read_text())
    return {key: data[key] for key in RESULT_KEYS}


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """A cache folder of its own. The toy pair ships with the package, so its model folder is empty."""
    root = tmp_path_factory.mktemp("cache")
    (root / "toy").mkdir()
    return root


@pytest.fixture(scope="module")
def cold_run(private_cache, tmp_path_factory) -> tuple[Path, Path]:
    """One tiny run on an empty activation cache: (the cache it filled, its run folder). Tests that
    compare against it copy the cache, so the run's subprocess (~10 s) is paid once per module."""
    root = tmp_path_factory.mktemp("cold")
    cache, folder = root / "cache", root / "run"
    shutil.copytree(private_cache / "toy", cache / "toy")
    assert run_cli([*TINY, "--out", str(folder)], cache).wait() == 0
    return cache, folder


def _interruptible() -> None:
    # A job started in the background by a non-interactive shell (as CI may be) inherits SIGINT as
    # ignored, and Python then installs no KeyboardInterrupt handler: restore the terminal's default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(args, cache: Path, **kwargs) -> subprocess.Popen:
    kwargs.setdefault("preexec_fn", _interruptible)
    env = dict(os.environ, MI_BRIDGE_CACHE=str(cache))
    return subprocess.Popen(
        [sys.executable, "-m", "mi_bridge.run", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def start_and_wait_for_capture(models_cache: Path, cache: Path, out: Path) -> subprocess.Popen:
    """Start a tiny run on a fresh activation cache and return once it is mid-capture (its first
    activation file has landed), before evaluation and before anything is written to ``out``."""
    shutil.copytree(models_cache / "toy", cache / "toy")
    process = run_cli([*TINY, "--out", str(out)], cache)
    while process.poll() is None and not list((cache / "activations").rglob("*.safetensors")):
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be interrupted"
    return process


# ---------------------------------------------------------------------------------------------------------
# Crash safety


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "results.json"

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text('{"half": ')
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_atomic(target, half_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_sigkill_during_a_write_never_leaves_the_final_file(tmp_path):
    target = tmp_path / "big.safetensors"
    script = (
        "import time, torch; from pathlib import Path; from mi_bridge.files import write_atomic\n"
        "def slow(tmp):\n    tmp.write_bytes(b'x' * 1000); time.sleep(30)\n"
        f"write_atomic(Path({str(target)!r}), slow)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 30
    while (
        not any(p.name.startswith(".big.safetensors.tmp") for p in tmp_path.iterdir())
        and time.time() < deadline
    ):
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not target.exists()  # only a hidden temporary that no loader reads


def test_publishing_a_folder_sweeps_what_a_killed_run_left_and_replaces_whole(tmp_path):
    from mi_bridge.files import publish_folder

    stale = tmp_path / ".run.partial-abc"
    stale.mkdir()
    (stale / "results.json").write_text("{half")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "old.txt").write_text("old")
    publish_folder(
        tmp_path / "run", lambda staging: (staging / "results.json").write_text("{}"), overwrite=True
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["results.json"]


@once_per_ci
@pytest.mark.slow
def test_a_run_killed_midway_reruns_to_the_same_results(private_cache, cold_run, tmp_path):
    _, reference = cold_run
    cache = tmp_path / "cache"
    out = tmp_path / "killed"
    process = start_and_wait_for_capture(private_cache, cache, out)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists(), "a killed run must leave no run folder"
    assert run_cli([*TINY, "--out", str(out)], cache).wait() == 0
    assert results_of(out) == results_of(reference)
    assert not list(tmp_path.glob(".killed.partial-*"))  # a killed run's staging folder is swept away


@once_per_ci
@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_and_no_run_folder(private_cache, tmp_path):
    out = tmp_path / "interrupted"
    process = start_and_wait_for_capture(private_cache, tmp_path / "cache", out)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: interrupted") and "Traceback" not in err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------
# Cache integrity and determinism


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "flip", "nan"])
def test_a_damaged_activation_file_is_reported_discarded_and_recomputed(cold_run, tmp_path, damage):
    cold_cache, first = cold_run
    cache = tmp_path / "cache"
    shutil.copytree(cold_cache, cache)
    files = sorted((cache / "activations").rglob("L*.safetensors"))
    assert files, "the run should have cached its activations"
    victim = files[0]
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:50])
    elif damage == "flip":
        data = bytearray(victim.read_bytes())
        data[-1] ^= 0xFF
        victim.write_bytes(bytes(data))
    else:  # a NaN tensor with a matching checksum: still refused
        from mi_bridge.files import sha256_tensor

        value = torch.full((40, 4), float("nan"))
        save_file({"value": value}, victim, metadata={"sha256": sha256_tensor(value)})
    second = tmp_path / "second"
    process = run_cli([*TINY, "--out", str(second)], cache)
    _, err = process.communicate()
    assert process.returncode == 0
    assert "discarding cached activations" in err
    assert results_of(second) == results_of(first)


@once_per_ci
@pytest.mark.slow
def test_cold_and_warm_runs_are_bit_identical_and_record_their_provenance(cold_run, tmp_path):
    cold_cache, cold = cold_run
    cache = tmp_path / "cache"
    shutil.copytree(cold_cache, cache)
    runs = [cold, tmp_path / "warm", tmp_path / "no_cache"]
    cached = lambda: sorted((cache / "activations").rglob("*.safetensors"))
    before = cached()
    assert before and run_cli([*TINY, "--out", str(runs[1])], cache).wait() == 0
    assert cached() == before  # warm: every activation came from the cache, none was captured anew
    assert run_cli([*TINY, "--no-cache", "--out", str(runs[2])], cache).wait() == 0
    assert results_of(runs[0]) == results_of(runs[1]) == results_of(runs[2])
    versions = json.loads((runs[0] / "results.json").read_text())["versions"]
    assert {"python", "torch", "transformer-lens", "mi_bridge", "git_revision"} <= set(versions)
    config = json.loads((runs[0] / "config.json").read_text())
    assert ExperimentConfig.from_dict(config).to_dict() == config


@tl3_only
def test_a_damaged_toy_model_is_never_loaded(tmp_path):
    from transformer_lens import HookedTransformer

    from mi_bridge.models.toy import _load_cached, save_atomic

    recipe = TOY_MODELS["toy-sender"]
    model = HookedTransformer(recipe.model_config())
    save_atomic(model, recipe, tmp_path)
    assert _load_cached(HookedTransformer(recipe.model_config()), tmp_path, recipe) is None
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    assert "checksum" in _load_cached(HookedTransformer(recipe.model_config()), tmp_path, recipe)
    (tmp_path / "config.json").unlink()  # weights without the config that vouches for them
    assert _load_cached(HookedTransformer(recipe.model_config()), tmp_path, recipe) == "absent"


def test_a_bridge_is_refused_when_damaged_or_fitted_for_other_models(tmp_path):
    x, y = torch.randn(100, 8), torch.randn(100, 12)
    LinearBridge.fit(
        x, y, metadata={"sender": "a", "receiver": "b", "receiver_hook": "blocks.3.hook_resid_post"}
    ).save(tmp_path)
    LinearBridge.load(tmp_path, expect={"sender": "a", "receiver": "b"})
    with pytest.raises(UserError, match="fitted for receiver_hook"):
        LinearBridge.load(tmp_path, expect={"receiver_hook": "blocks.5.hook_resid_post"})
    save_file({name: torch.zeros(1) for name in ("weight",)}, tmp_path / "bridge.safetensors")
    with pytest.raises(UserError, match="checksum"):
        LinearBridge.load(tmp_path)


@pytest.mark.parametrize("content", ["", "{", "[]", '{"d_sender": "x"}'])
def test_malformed_bridge_metadata_is_one_clear_error(tmp_path, content):
    LinearBridge.fit(torch.randn(50, 4), torch.randn(50, 6)).save(tmp_path)
    (tmp_path / "bridge.json").write_text(content)
    with pytest.raises(UserError, match="bridge"):
        LinearBridge.load(tmp_path)


def test_nan_bridge_weights_are_refused(tmp_path):
    bridge = LinearBridge.fit(torch.randn(50, 4), torch.randn(50, 6))
    bridge.weight[0, 0] = float("nan")
    bridge.save(tmp_path)
    with pytest.raises(UserError, match="NaN"):
        LinearBridge.load(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Bad input, table-driven: every flag


BAD_FLAGS = {
    "--pair": ["", "gpt", "1"],
    "--sender-layer": ["x", "1.5", "-1", ""],
    "--receiver-layer": ["two", "-3"],
    "--position": ["middle", ""],
    "--target": ["anything"],
    "--alphas": ["", "a,b", "-1", "0", "inf", "nan", "1,,2"],
    "--k": ["four", "1", "0", "-2", ""],
    "--n-items": ["many", "10", "0", "-5"],
    "--seeds": ["x", "0", "-1"],
    "--batch-size": ["0", "1.5", "big"],
    "--n-bootstrap": ["5", "-1", "x"],
    "--device": ["quantum", "gpu:x"],
    "--seed": ["x", "-1", "10000", "1.5"],
    "--conditions": ["", "nothing", "controls", "translated,,"],
    "--config": ["/nonexistent/config.json"],
}
CASES = [(flag, value) for flag, values in BAD_FLAGS.items() for value in values]


@once_per_ci
@pytest.mark.parametrize(("flag", "value"), CASES, ids=[f"{f}={v!r}" for f, v in CASES])
def test_every_flag_rejects_bad_values_with_one_line(flag, value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([flag, value, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--pair", "toy", "--sender", "pythia-160m"],
        ["--pair", "toy", "--receiver", ""],
        ["--pair", "pythia", "--sender", "toy-sender", "--receiver", "toy-receiver"],
    ],
)
def test_conflicting_flags_are_one_clear_error(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error:")


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        "[1, 2]",
        '"text"',
        '{"k": "four"}',
        '{"alphas": [1, "x"]}',
        '{"seeds": true}',
        '{"layers": 3}',
        '{"k": null}',
    ],
)
def test_malformed_config_files_are_one_clear_error(content, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(UserError):
        config_from_args(build_parser().parse_args(["--config", str(path)]))


def test_analysis_names_cannot_become_paths(capsys):
    from mi_bridge.analyses.runner import main as analyses_main

    assert analyses_main(["../../etc/passwd"]) == 2
    assert "no analysis script named" in capsys.readouterr().err


def test_analyses_help_without_names_lists_every_scripts_flags(capsys):
    from mi_bridge.analyses.runner import main as analyses_main

    with pytest.raises(SystemExit) as exit_:
        analyses_main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--pca-k" in out and "--sweep-stride" in out  # flags that only one script adds


# ---------------------------------------------------------------------------------------------------------
# Fuzzing the parsers: anything but a valid configuration is a UserError, never a crash


FLAGS = sorted(BAD_FLAGS) + ["--sender", "--receiver", "--out"]
tokens = st.one_of(
    st.sampled_from(FLAGS),
    st.text(max_size=12),
    st.integers(-5, 5000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@once_per_ci
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tokens, max_size=8))
def test_fuzzed_command_lines_parse_or_fail_clearly(argv):
    try:
        config_from_args(build_parser().parse_args(argv))
    except UserError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
config_keys = st.sampled_from([f for f in ExperimentConfig().to_dict()] + ["bogus"])


@once_per_ci
@settings(max_examples=300, deadline=None)
@given(st.dictionaries(config_keys, json_values, max_size=6))
def test_fuzzed_config_dicts_load_or_fail_clearly(data):
    try:
        config = ExperimentConfig.from_dict(json.loads(json.dumps(data)))
    except UserError:
        return
    assert ExperimentConfig.from_dict(config.to_dict()) == config
