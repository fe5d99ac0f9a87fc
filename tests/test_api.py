"""The Python API: public names visible to ``dir``, ``run_experiment`` in memory with the command's
numbers, and the README's "Python API" code run as written."""

import json
import re
from pathlib import Path

import pytest

import mi_bridge
from mi_bridge.run import main, publish
from tests.conftest import once_per_ci

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TINY = {"n_items": 60, "seeds": 2, "alphas": (0.5, 1.0), "n_bootstrap": 200}


def test_the_public_names_are_listed_and_resolve():
    names = set(dir(mi_bridge))
    wanted = {"run_experiment", "RunResult", "load_pair", "load_model", "LinearBridge", "run_with_injection"}
    assert wanted | {"resid_states", "score", "sample_items", "ExperimentConfig"} <= names
    for name in mi_bridge.__all__:
        assert getattr(mi_bridge, name) is not None, name
    with pytest.raises(AttributeError):
        mi_bridge.no_such_name  # noqa: B018


def test_bad_input_to_the_api_is_a_user_error():
    with pytest.raises(mi_bridge.UserError, match="unknown toy model"):
        mi_bridge.load_pair("toy", sender="toy-giant")
    with pytest.raises(mi_bridge.UserError, match="out of range"):
        mi_bridge.run_experiment(receiver_layer=9)


@once_per_ci
@pytest.mark.slow
def test_run_experiment_prints_and_writes_nothing_and_gives_the_commands_numbers(
    tmp_path, monkeypatch, capfd
):
    monkeypatch.chdir(tmp_path)
    result = mi_bridge.run_experiment(**TINY)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert list(tmp_path.iterdir()) == []
    assert isinstance(result, mi_bridge.RunResult)
    assert (result.config.sender_layer, result.config.receiver_layer) == (2, 1)  # resolved
    assert result.verdict == result.results["verdict_label"]
    assert len(result.items) > 0 and result.condition("oracle")["delta_accuracy"] > 0

    out = tmp_path / "cli"
    argv = ["--n-items", "60", "--seeds", "2", "--alphas", "0.5,1", "--n-bootstrap", "200", "--no-cache"]
    assert main([*argv, "--out", str(out)]) == 0
    cli = json.loads((out / "results.json").read_text())
    strip = lambda results: {k: v for k, v in results.items() if k not in ("config", "versions")}
    assert strip(json.loads(json.dumps(result.results))) == strip(cli)

    publish(result, tmp_path / "published")  # the API's result written as the command writes it
    assert {p.name for p in (tmp_path / "published").iterdir()} == {p.name for p in out.iterdir()}


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


@once_per_ci
@pytest.mark.slow
def test_the_readme_python_section_runs_as_written(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    (block,) = python_blocks(section)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "with the translated state" in out
