"""Runs that never clobber and always repeat: default folder names per setting, refusal without
--overwrite, config.json with resolved values that replays the run, group-readable folders; the same for
the analyses and the sweep; and the flags that pick seeds and condition families."""

import json
import os
import stat
from dataclasses import replace

import pytest

from mi_bridge import sweep
from mi_bridge.analyses import runner
from mi_bridge.config import ExperimentConfig, current_record
from mi_bridge.core.conditions import FAMILIES, VECTOR_KINDS, select_conditions, standard_conditions
from mi_bridge.errors import UserError
from mi_bridge.files import publish_folder
from mi_bridge.run import main
from mi_bridge.run_folder import default_name, resolved, same_run
from tests.conftest import once_per_ci

TINY = ["--n-items", "60", "--seeds", "2", "--alphas", "0.5,1", "--n-bootstrap", "200"]


def name_of(**fields) -> str:
    config = ExperimentConfig.from_dict(fields)
    layers = (fields.get("sender_layer", 2), fields.get("receiver_layer", 1))
    return default_name(resolved(config, *layers), "tag")


def test_default_folder_names_differ_in_every_setting_that_changes_results():
    settings = [
        {},
        {"k": 3},
        {"n_items": 400},
        {"n_fit": 300},
        {"seeds": 2},
        {"seed": 5},
        {"dtype": "bfloat16"},
        {"alphas": (1.0,)},
        {"n_bootstrap": 500},
        {"test_fraction": 0.4},
        {"conditions": "translated,controls"},
        {"sender_layer": 0},
        {"receiver_layer": 0},
        {"pair": "pythia"},
        {"pair": "pythia", "template": "lives-in"},
        {"pair": "pythia", "sender_revision": "step1000"},
        {"pair": "pythia", "receiver_revision": "step1000"},
    ]
    names = [name_of(**s) for s in settings]
    assert len(set(names)) == len(names), names
    assert name_of().startswith("toy-toy-sender-toy-receiver-L2-L1-tag-")


def test_a_default_and_its_explicit_value_name_one_folder():
    explicit = {"sender": "toy-sender", "receiver": "toy-receiver", "conditions": "all"}
    assert name_of() == name_of(**explicit)
    # a selection's spelling does not matter: one canonical form
    conditions = lambda text: ExperimentConfig(options={"conditions": text}).options.conditions
    assert conditions("controls, translated") == "translated,controls"
    assert conditions("translated,controls,ceilings") == "all"
    pythia = resolved(ExperimentConfig(pair="pythia"), 5, 11)
    assert (pythia.sender_revision, pythia.receiver_revision) == ("main", "main")
    assert name_of(pair="pythia") == name_of(pair="pythia", sender_revision="main", receiver_revision="main")


def test_a_recorded_config_is_recognized_with_its_defaults_explicit():
    recorded = resolved(ExperimentConfig(n_items=40), 2, 1).to_dict()
    assert same_run(recorded, ExperimentConfig(n_items=40))
    assert same_run(recorded, ExperimentConfig(n_items=40, receiver_layer=1))
    assert not same_run(recorded, ExperimentConfig(n_items=40, receiver_layer=0))
    assert not same_run(recorded, ExperimentConfig(n_items=60))
    assert not same_run({"k": "four"}, ExperimentConfig())


def test_publishing_refuses_an_existing_folder_unless_told_to_replace_it(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()  # an empty folder holds nothing to lose
    publish_folder(folder, lambda staging: (staging / "a.txt").write_text("a"), overwrite=False)
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        publish_folder(folder, lambda staging: (staging / "b.txt").write_text("b"), overwrite=False)
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]
    publish_folder(folder, lambda staging: (staging / "b.txt").write_text("b"), overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging left


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def test_published_folders_are_readable_by_the_group(tmp_path, umask_022):
    def write(staging):
        (staging / "sub").mkdir()
        (staging / "sub" / "f.txt").write_text("x")
        (staging / "results.json").write_text("{}")

    publish_folder(tmp_path / "run", write, overwrite=False)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes == {"run": 0o755, "run/sub": 0o755, "run/sub/f.txt": 0o644, "run/results.json": 0o644}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    before = os.umask(0o022)
    try:
        assert main([*TINY, "--out", str(out)]) == 0
    finally:
        os.umask(before)
    return out


@pytest.mark.slow
def test_a_second_run_into_the_folder_is_refused_and_overwrite_replaces_it(tiny_run, tmp_path, capsys):
    results = tiny_run / "results.json"
    stamp = results.stat().st_mtime_ns
    capsys.readouterr()
    assert main([*TINY, "--out", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "already exists; pass --overwrite" in lines[0], err
    assert results.stat().st_mtime_ns == stamp  # untouched
    # --overwrite replaces it whole (into a copy here, so that the module's run stays as it was)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "stale.txt").write_text("from an older run")
    assert main([*TINY, "--out", str(copy), "--overwrite"]) == 0
    assert not (copy / "stale.txt").exists() and (copy / "results.json").is_file()


@pytest.mark.slow
def test_the_run_folder_is_group_readable_and_config_json_holds_resolved_values(tiny_run):
    for path in [tiny_run, *tiny_run.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
    config = json.loads((tiny_run / "config.json").read_text())
    assert (config["sender"], config["receiver"]) == ("toy-sender", "toy-receiver")
    assert (config["sender_layer"], config["receiver_layer"]) == (2, 1)
    assert (config["template"], config["seed"], config["conditions"]) == ("toy", 0, "all")
    assert "bridge" not in config and "max_new_tokens" not in config  # the split protocol's options only
    assert set(config["extra"]["models"]) == {"sender", "receiver"}  # the exact checkpoints


@pytest.mark.slow
def test_config_json_repeats_the_run_after_a_default_changes(tiny_run, tmp_path, monkeypatch):
    """A replay reads the layers from config.json, not from today's defaults."""
    from mi_bridge.models import loading

    monkeypatch.setattr(loading, "default_layer", lambda *args, **kwargs: 0)  # a later default
    again = tmp_path / "again"
    assert main(["--config", str(tiny_run / "config.json"), "--out", str(again)]) == 0
    first, second = (json.loads((p / "results.json").read_text()) for p in (tiny_run, again))
    assert second["layers"] == first["layers"] == {"sender": 2, "receiver": 1}
    for key in ("validity", "site", "bridge", "conditions", "verdict"):
        assert first[key] == second[key], key


@once_per_ci
@pytest.mark.slow
def test_the_default_folder_is_named_by_the_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["--n-items", "40", "--seeds", "1", "--alphas", "1", "--n-bootstrap", "200", "--no-site-scan"]
    assert main(args) == 0
    assert main([*args, "--k", "3"]) == 0
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all(
        f.startswith("toy-toy-sender-toy-receiver-L2-L1-slot-relay-slot-") for f in folders
    )
    capsys.readouterr()
    assert main(args) == 2  # the same settings again: that run exists
    assert "already exists" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# --seed and --conditions


def test_condition_families_select_and_default_to_everything():
    everything = standard_conditions((0.5, 1.0))
    assert select_conditions(everything) == everything  # the default: bit-identical conditions
    assert sum(FAMILIES.values(), ()) == VECTOR_KINDS
    chosen = select_conditions(
        everything, ["translated", "controls"], ["rescale"], keep={"self-patch replace"}
    )
    assert [c.name for c in chosen] == [
        "baseline",
        "text relay",
        "oracle",
        "translated rescale",
        "random rescale",
        "shuffled rescale",
        "mean rescale",
        "self-patch replace",
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("controls", "must include translated"),
        ("nothing", "unknown condition family or mode"),
        ("translated,,", "unknown condition family or mode"),
    ],
)
def test_bad_condition_selections_are_one_clear_error(text, message):
    with pytest.raises(UserError, match=message):
        ExperimentConfig(options={"conditions": text})


def test_the_seed_protocol_takes_no_condition_selection_and_seeds_stay_in_range():
    with pytest.raises(UserError, match="--conditions applies to --protocol split, not seed"):
        ExperimentConfig.from_dict({"pair": "pythia", "protocol": "seed", "conditions": "translated"})
    with pytest.raises(UserError, match="--bridge applies to --protocol seed, not split"):
        ExperimentConfig.from_dict({"bridge": "sgd-l2"})
    with pytest.raises(UserError, match="seed must lie"):
        ExperimentConfig(seed=-1)
    with pytest.raises(UserError, match="seed must lie"):
        ExperimentConfig(seed=9999, seeds=3)
    assert list(ExperimentConfig(seed=4, seeds=2).seed_indices) == [4, 5]


@once_per_ci
@pytest.mark.slow
def test_a_base_seed_shifts_every_seed_index(tiny_run, tmp_path):
    """--seed 1 --seeds 1 is exactly seed 1 of a two-seed run: same items, split, bridge and controls."""
    out = tmp_path / "seed1"
    args = [a for a in TINY if a not in ("--seeds", "2")]
    assert main([*args, "--seeds", "1", "--seed", "1", "--out", str(out)]) == 0
    both, second = (json.loads((p / "results.json").read_text()) for p in (tiny_run, out))
    for a, b in zip(both["conditions"], second["conditions"], strict=True):
        assert a["accuracy_per_seed"][1] == b["accuracy_per_seed"][0], a["name"]
        assert a["gold_logprob_per_seed"][1] == b["gold_logprob_per_seed"][0], a["name"]
    assert {p.name for p in (out / "bridge").iterdir() if not p.name.startswith("second-site")} == {"seed1"}


@once_per_ci
@pytest.mark.slow
def test_fewer_condition_families_run_and_report(tmp_path):
    out = tmp_path / "few"
    assert main([*TINY, "--conditions", "translated,rescale", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [c["name"] for c in results["conditions"]] == [
        "baseline",
        "text relay",
        "oracle",
        "translated rescale",
        "self-patch replace",
        "counterfactual self-patch replace",
        "context-free self-patch replace",
    ]
    assert (out / "report.md").is_file()


# ---------------------------------------------------------------------------------------------------------
# The analyses and the sweep


def test_an_existing_analyses_folder_is_refused_before_any_model_loads(tmp_path, capsys, monkeypatch):
    from mi_bridge.analyses import common

    for module in (common, runner):
        monkeypatch.setattr(module, "prepare_context", lambda *a: pytest.fail("loaded models"))
    root = tmp_path / "analyses"
    root.mkdir()
    (root / "report.md").write_text("an earlier run")
    assert runner.main(["all", "--out", str(root)]) == 2
    assert runner.main(["logit_lens", "norm_ablation", "--out", str(root)]) == 2
    assert common.run_script(runner.load_script("logit_lens"), ["--out", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("already exists; pass --overwrite") == 3, err
    assert (root / "report.md").read_text() == "an earlier run"


def test_default_analyses_folders_differ_by_settings_and_analyses(tmp_path):
    from mi_bridge.analyses import common

    parser = common.build_parser("p", "d", [runner.load_script("usability_bridge")])
    config = resolved(ExperimentConfig(), 2, 1)
    default = parser.parse_args([])
    names = {
        common.default_folder("all", config, default, analyses=["a", "b"]),
        common.default_folder("all", config, default, analyses=["a"]),
        common.default_folder("all", replace(config, k=3), default, analyses=["a", "b"]),
        common.default_folder("all", config, parser.parse_args(["--train-steps", "5"]), analyses=["a", "b"]),
    }
    assert len(names) == 4
    # command flags change nothing computed, so not the name either
    overwrite = parser.parse_args(["--overwrite", "--no-cache", "--full"])
    assert common.default_folder("x", config, overwrite) == common.default_folder("x", config, default)


SWEEP = [
    "--n-items",
    "40",
    "--seeds",
    "1",
    "--alphas",
    "1",
    "--n-bootstrap",
    "200",
    "--no-site-scan",
    "--local",
]


@once_per_ci
@pytest.mark.slow
def test_a_sweep_resumes_its_own_folder_and_refuses_another_grid(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert sweep.main([*SWEEP, "--receiver-layer", "0", "--out", str(out)]) == 0
    assert json.loads((out / "grid.json").read_text())["grid"]["receiver_layer"] == [0]
    assert sweep.main([*SWEEP, "--receiver-layer", "0", "--out", str(out)]) == 0  # resumes: nothing to do
    (row,) = json.loads((out / "sweep.json").read_text())["cells"]
    assert row["status"] == "done" and row["attempts"] == 0
    capsys.readouterr()
    assert sweep.main([*SWEEP, "--receiver-layer", "0,1", "--out", str(out)]) == 2
    assert sweep.main([*SWEEP, "--receiver-layer", "0", "--k", "3", "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("sweep of another configuration") == 2
    assert sweep.main([*SWEEP, "--receiver-layer", "1", "--overwrite", "--out", str(out)]) == 0
    cells = json.loads((out / "sweep.json").read_text())["cells"]
    assert [c["name"] for c in cells] == ["toy-sender-toy-receiver-Lmid-L1-slot-relay-slot"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [cells[0]["name"]]


def test_default_sweep_folders_differ_by_grid_and_settings():
    base = ExperimentConfig()
    names = {
        sweep.short_hash(sweep.manifest(base, {"receiver_layer": [0, 1]})),
        sweep.short_hash(sweep.manifest(base, {"receiver_layer": [0]})),
        sweep.short_hash(sweep.manifest(replace(base, k=3), {"receiver_layer": [0, 1]})),
    }
    assert len(names) == 3


# ---------------------------------------------------------------------------------------------------------
# Help


def help_text(command, argv, capsys) -> str:
    with pytest.raises(SystemExit):
        command(argv)
    return capsys.readouterr().out


def test_run_help_keeps_the_examples(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = help_text(main, ["--help"], capsys)
    assert "Examples:\n    python -m mi_bridge.run " in text
    assert "--config runs/<run>/config.json" in text and "--overwrite" in text


def test_analyses_help_lists_every_analysis(capsys):
    text = help_text(runner.main, ["--help"], capsys)
    for name in runner.ORDER:
        assert f"\n  {name} " in text, name


def test_sweep_help_offers_ranges_for_layers_only_and_names_the_choices(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    text = help_text(sweep.main, ["--help"], capsys)
    assert ".;" not in text
    blocks = ["--" + block for block in text.split("\n  --")[1:]]  # one per option, its help included
    lines = {block.split()[0]: " ".join(block.split()) for block in blocks}
    assert "list or range" in lines["--receiver-layer"] and "list or range" not in lines["--sender"]
    assert "no ranges" in lines["--sender-revision"]
    assert "of slot, final" in lines["--position"] and "of relay-slot, same-input" in lines["--target"]
    assert "Sweep folder" in lines["--out"] and "Examples:" in text


def test_a_flat_config_of_old_still_replays_under_each_protocol():
    """Before protocols owned their options, config.json carried every protocol's fields (and the split
    protocol's resolved bridge kind): such a record still loads, to the same run; another protocol's
    fields are dropped, and those that held a non-default value are named."""
    shared = resolved(ExperimentConfig(n_items=40), 2, 1).to_dict()
    split_options = {"position": "final", "target": "relay-slot", "alphas": [0.5], "conditions": "all"}
    seed_options = {"bridge": None, "fit_corpus": None, "max_new_tokens": 64}
    old_split = (
        shared | split_options | seed_options | {"bridge": "ridge", "site_scan": True, "second_site": True}
    )
    record, dropped = current_record(old_split)
    config = ExperimentConfig.from_dict(record)
    assert (config.options.position, config.options.alphas, dropped) == ("final", (0.5,), [])
    assert same_run(old_split, config.with_values(position="final", alphas=(0.5,)))
    old_seed = old_split | {"pair": "pythia", "template": "list", "protocol": "seed", "bridge": "both"}
    old_seed |= {"position": "final", "alphas": [0.25, 0.5, 1.0, 2.0], "max_new_tokens": 16}
    record, dropped = current_record(old_seed)
    seed = ExperimentConfig.from_dict(record)
    assert (seed.options.bridge_kinds, seed.options.max_new_tokens) == (("sgd-l2", "ridge"), 16)
    assert dropped == ["position"]  # recorded, though the seed protocol never read it
    # as a flag or an API keyword, another protocol's option is refused even at its default
    with pytest.raises(UserError, match="--position applies to --protocol split, not seed"):
        ExperimentConfig.from_dict({"pair": "pythia", "protocol": "seed", "position": "slot"})


def test_an_option_named_like_a_shared_field_or_another_protocols_is_refused(monkeypatch):
    from mi_bridge import config as config_module

    monkeypatch.setitem(config_module.PROTOCOLS, "clash", "tests.protocols.clash_protocol")
    with pytest.raises(UserError, match="protocol clash's option 'k' clashes with the shared config's"):
        config_module.all_options()
