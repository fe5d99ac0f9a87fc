"""A third protocol plugs in without a line changed in mi_bridge: its package (options and protocol, in
tests/protocols/stub_protocol/) and one ``register_protocol`` call, then ``python -m mi_bridge.run
--protocol stub`` takes its options as flags, validates, runs and publishes it."""

import json

import pytest

from mi_bridge.config import PROTOCOLS, ExperimentConfig, register_protocol
from mi_bridge.errors import UserError
from mi_bridge.run import main


@pytest.fixture
def stub():
    register_protocol("stub", "tests.protocols.stub_protocol")  # what a user's package would call
    yield
    PROTOCOLS.pop("stub", None)


def test_a_third_protocol_registers_validates_and_runs_through_mi_bridge_run(stub, tmp_path, capsys):
    with pytest.raises(UserError, match="at most 6 candidates"):  # its own rule, read by the config
        ExperimentConfig(protocol="stub", k=8)
    refused = ["--protocol", "stub", "--candidates-cap", "5", "--k", "6", "--out", str(tmp_path / "no")]
    assert main(refused) == 2  # its own option, as a flag: one line, nothing written
    assert "at most 5 candidates" in capsys.readouterr().err
    with pytest.raises(UserError, match="--candidates-cap applies to --protocol stub, not split"):
        ExperimentConfig.from_dict({"candidates_cap": 3})
    out = tmp_path / "run"
    assert main(["--protocol", "stub", "--n-items", "40", "--seeds", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["stub"] is True and results["verdict_label"] == "untestable here"
    assert results["conditions"][0]["n"] == 40
    assert {"config.json", "report.md", "figure.png", "items.parquet", "stub.txt"} <= {
        p.name for p in out.iterdir()
    }
    recorded = json.loads((out / "config.json").read_text())
    assert (recorded["protocol"], recorded["candidates_cap"]) == ("stub", 6)
    assert not (tmp_path / "no").exists()


def test_an_unregistered_protocol_is_one_line():
    with pytest.raises(UserError, match="unknown protocol 'nope'; choose one of split, seed"):
        ExperimentConfig(protocol="nope")
