"""The KV channel's verdict (``protocols.split.kv_summary.judge``) on planted section summaries: the sender
helps only beyond the learned prefix; no ceiling, or a self-pair reference, withholds it. And the run's
one-line refusals of the channel where it is not built. The channel end to end is
tests/protocols/test_kv_run.py; its plumbing, tests/models/test_kv_delivery.py and tests/bridges/test_kv.py."""

from mi_bridge.protocols.split.kv_channel import CEILINGS, FUSER, KV_CONDITIONS, LINEAR, PREFIX
from mi_bridge.protocols.split.kv_summary import judge
from mi_bridge.run import main


def test_the_kv_channel_is_refused_in_one_line_where_it_is_not_built(capsys, tmp_path):
    assert main(["--pair", "pythia", "--protocol", "seed", "--kv-channel", "--out", str(tmp_path / "s")]) == 2
    assert "--kv-channel applies to --protocol split, not seed" in capsys.readouterr().err
    assert main(["--kv-channel", "--kv-layer-map", "sideways", "--out", str(tmp_path / "m")]) == 2
    assert "--kv-layer-map: unknown layer map 'sideways'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


def summary(delta: float, low: float, high: float, p: float = 0.5) -> dict:
    return {"delta_accuracy": delta, "delta_accuracy_ci": [low, high], "delta_accuracy_p": p, "n": 100}


HELPS, NOTHING = summary(0.2, 0.1, 0.3, 1e-4), summary(0.0, -0.1, 0.1)


def verdict(*, ceiling=HELPS, fuser=HELPS, prefix=NOTHING, beyond_prefix=HELPS, self_reference=False):
    kv = {name: NOTHING for name in KV_CONDITIONS} | {"oracle": summary(0.6, 0.5, 0.7)}
    kv |= {CEILINGS[1]: ceiling, FUSER: fuser, PREFIX: prefix}
    section = {
        "conditions": kv,
        "versus_prefix": {LINEAR: NOTHING, FUSER: beyond_prefix},
        "versus_shuffled": {LINEAR: NOTHING, FUSER: HELPS},
        "holm_p_versus_prefix": {LINEAR: 1.0, FUSER: 2e-4 if beyond_prefix is HELPS else 1.0},
        "layer_map": "shift:2",
        "self_reference": self_reference,
        "sites": {
            "3": {
                "band": "after L3",
                "conditions": kv,
                "versus_prefix": {FUSER: NOTHING},
                "residual": {"name": "translated replace"} | NOTHING,
            }
        },
        "heldout_normalized_cosine": {"keys": 0.9, "values": 0.8},
        "cpu_minutes_per_seed": [1.0],
    }
    return judge(section, 0.25)


def test_the_sender_helps_only_beyond_the_learned_prefix():
    assert verdict()[0] == "transfer helps"
    # the fuser helps against the baseline, but a prefix with no sender input does as well
    label, text = verdict(prefix=HELPS, beyond_prefix=NOTHING)
    assert label == "no transfer" and "adaptation, not a message" in text


def test_no_ceiling_or_a_self_pair_reference_withholds_the_verdict():
    label, text = verdict(ceiling=NOTHING)
    assert label == "untestable here" and "no cache of P could" in text
    label, text = verdict(self_reference=True)
    assert label == "untestable here" and "the reference, not a channel" in text
