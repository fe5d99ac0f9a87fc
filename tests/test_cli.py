"""The CLI end to end on a tiny configuration, the results.json schema, and every bad input."""

import json

import pytest
import torch

from mi_bridge.run import main

pytestmark = pytest.mark.slow

TINY = ["--n-items", "60", "--seeds", "2", "--alphas", "0.5,1", "--n-bootstrap", "200"]
CONDITION_KEYS = {
    "name",
    "mode",
    "alpha",
    "n",
    "accuracy",
    "delta_accuracy",
    "delta_accuracy_ci",
    "gold_logprob",
    "delta_logprob",
    "delta_logprob_ci",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main([*TINY, "--out", str(out)]) == 0
    return out


def test_the_run_folder_and_results_schema(tiny_run):
    assert {p.name for p in tiny_run.iterdir()} == {
        "results.json",
        "report.md",
        "config.json",
        "figure.png",
        "bridge",
        "items.parquet",
    }
    assert {p.name for p in (tiny_run / "bridge" / "seed0").iterdir()} == {
        "bridge.json",
        "bridge.safetensors",
    }
    results = json.loads((tiny_run / "results.json").read_text())
    assert {
        "config",
        "validity",
        "site",
        "site_scan",
        "decomposition",
        "bridge",
        "conditions",
        "verdict",
    } <= set(results)
    assert results["verdict_label"] in ("transfer helps", "no transfer", "untestable here")
    site = results["site"]
    assert site["class"] in ("pre-lookup", "post-lookup", "inert", "undetermined")
    for key in ("self_patch", "context_free", "follow_rate"):
        assert (
            set(site[key]) == {"mean", "ci", "n"}
            and site[key]["ci"][0] <= site[key]["mean"] <= site[key]["ci"][1]
        )
    assert [row["layer"] for row in results["site_scan"]] == list(range(4))  # every receiver layer
    assert results["site_scan"][results["layers"]["receiver"]] == site  # the scan agrees with the run
    stages = [s["stage"] for s in results["decomposition"]["stages"]]
    assert stages == ["task", "site", "sender", "translation", "usability"]
    for metric in ("normalized_cosine", "raw_cosine", "centered_cosine", "r2"):
        assert set(results["bridge"][metric]) == {"mean", "per_seed"}
        assert len(results["bridge"][metric]["per_seed"]) == 2
    names = [c["name"] for c in results["conditions"]]
    assert names[:3] == ["baseline", "text relay", "oracle"]
    for kind in (
        "translated",
        "random",
        "shuffled",
        "mean",
        "self-patch",
        "counterfactual self-patch",
        "context-free self-patch",
    ):
        assert {f"{kind} add a=0.5", f"{kind} add a=1", f"{kind} replace", f"{kind} rescale"} <= set(names)
    for condition in results["conditions"]:
        assert CONDITION_KEYS <= set(condition)
        assert condition["n"] == 60  # 30 held-out items x 2 seeds
        low, high = condition["delta_accuracy_ci"]
        assert low <= condition["delta_accuracy"] <= high
    baseline = results["conditions"][0]
    assert baseline["delta_accuracy"] == 0 and baseline["delta_accuracy_ci"] == [0.0, 0.0]
    # alpha = 0 is not in the sweep, but every additive condition with alpha -> 0 must approach baseline:
    # checked exactly in test_inject; here, self-patch replace must reach the oracle's accuracy
    by_name = {c["name"]: c for c in results["conditions"]}
    assert by_name["self-patch replace"]["accuracy"] >= by_name["oracle"]["accuracy"] - 0.05
    markdown = (tiny_run / "report.md").read_text()
    assert "**Verdict: " in markdown and "## Site diagnosis" in markdown
    # bold marks single cells whose CI excludes 0, never a whole row
    for line in markdown.splitlines():
        if line.startswith("| ") and "**" in line:
            cells = line.strip("|").split("|")
            assert not all(cell.strip().startswith("**") for cell in cells), line


def test_the_config_file_repeats_the_run_exactly(tiny_run, tmp_path):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["sender_layer"] is not None and config["receiver_layer"] is not None  # resolved
    again = tmp_path / "again"
    assert main(["--config", str(tiny_run / "config.json"), "--out", str(again)]) == 0
    first, second = (json.loads((p / "results.json").read_text()) for p in (tiny_run, again))
    for key in ("validity", "bridge", "conditions", "verdict"):
        assert first[key] == second[key]


def test_the_run_records_the_device_it_ran_on(tiny_run):
    """--device defaults to auto: config.json keeps what was asked, and both files name the device that
    ran and its GPU (here, without CUDA, the CPU and null)."""
    from mi_bridge.core.device import describe, resolve_device

    config = json.loads((tiny_run / "config.json").read_text())
    results = json.loads((tiny_run / "results.json").read_text())
    assert config["device"] == "auto"
    assert results["device"] == config["extra"]["device"] == describe(resolve_device("auto"))
    if not torch.cuda.is_available():
        assert results["device"] == {"device": "cpu", "gpu_name": None}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_absent_device_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "not available" in lines[0], lines
    assert not (tmp_path / "out").exists()


def _bad_inputs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {
        "unknown pair": (["--pair", "gpt"], "invalid choice"),
        "unknown model": (["--sender", "toy-giant"], "unknown toy model"),
        "layer out of range": (["--receiver-layer", "9"], "out of range"),
        "negative layer": (["--sender-layer", "-1"], "must be >= 0"),
        "k beyond the pool": (["--k", "30"], "entity pool"),
        "too few items": (["--n-items", "10"], "too few items"),
        "unwritable out": (["--out", str(a_file / "run")], "not writable"),
        "bad alphas": (["--alphas", "one,two"], "comma-separated"),
        "negative alpha": (["--alphas", "-1"], "alphas"),
        "bad integer": (["--k", "four"], "invalid int"),
        "missing config": (["--config", str(tmp_path / "nope.json")], "cannot read config"),
        "unknown config key": (
            ["--config", str(_write(tmp_path / "c.json", {"layers": 3}))],
            "unknown config keys",
        ),
    }


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "case",
    [
        "unknown pair",
        "unknown model",
        "layer out of range",
        "negative layer",
        "k beyond the pool",
        "too few items",
        "unwritable out",
        "bad alphas",
        "negative alpha",
        "bad integer",
        "missing config",
        "unknown config key",
    ],
)
def test_bad_input_is_one_clear_line_exit_2_and_nothing_written(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, expected = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    if "--out" not in argv:
        argv = [*argv, "--out", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error:") and expected in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_help_lists_every_config_field_once_with_its_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside a default such as relay-slot
    from dataclasses import MISSING, fields

    from mi_bridge.cli import NOT_FLAGS
    from mi_bridge.config import ExperimentConfig, all_options, option_specs

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    text = text[: text.index(" Examples: ")]  # the flags, without the examples after them
    specs = [(spec.name, spec) for spec in fields(ExperimentConfig)]
    specs += [
        (name, spec) for options in all_options().values() for name, _, spec, _ in option_specs(options)
    ]
    for name, spec in specs:
        if name in NOT_FLAGS:
            continue
        flag = "--" + name.replace("_", "-")
        assert text.count(f" {flag} ") + text.count(f" {flag},") == 1, flag
        options = text.index("options:")
        help_start = min(
            i for i in (text.find(f"{flag} ", options), text.find(f"{flag},", options)) if i >= 0
        )
        help_text = text[help_start : help_start + 400].lower()
        assert "default" in help_text, flag  # the default, or what it is derived from
        if spec.default not in (MISSING, None) and not isinstance(spec.default, tuple):
            assert f"(default: {spec.default})".lower() in help_text, flag


def test_every_config_field_belongs_to_one_group_and_help_shows_the_groups():
    import subprocess
    import sys
    from dataclasses import fields

    from mi_bridge.config import FIELD_GROUPS, ExperimentConfig

    grouped = [name for names in FIELD_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in fields(ExperimentConfig) if f.name != "options")
    text = subprocess.run(
        [sys.executable, "-m", "mi_bridge.run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert (
        all(f"\n{group}:\n" in text for group in FIELD_GROUPS if group != "running") and "\nrunning:" in text
    )
    # each protocol's options in a group of their own
    assert "\nsplit protocol:\n" in text and "\nseed protocol:\n" in text
