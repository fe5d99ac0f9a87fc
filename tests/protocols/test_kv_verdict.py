"""The KV channel's verdict (``protocols.split.kv_summary.judge``) on planted section summaries: the sender
helps only beyond the learned prefix; under prompt, no ceiling, or a self-pair reference, withholds it;
under facts a self-pair is the positive control. And the run's
one-line refusals of the channel where it is not built. The channel end to end is
tests/protocols/test_kv_run.py; its plumbing, tests/models/test_kv_delivery.py and tests/bridges/test_kv.py."""

from mi_bridge.protocols.split.kv_channel import CEILING, FUSER, LINEAR, PREFIX, READS_F, kv_conditions
from mi_bridge.protocols.split.kv_summary import judge
from mi_bridge.run import main


def test_the_kv_channel_is_refused_in_one_line_where_it_is_not_built(capsys, tmp_path):
    assert main(["--pair", "pythia", "--protocol", "seed", "--kv-channel", "--out", str(tmp_path / "s")]) == 2
    assert "--kv-channel applies to --protocol split, not seed" in capsys.readouterr().err
    assert main(["--kv-channel", "--kv-layer-map", "sideways", "--out", str(tmp_path / "m")]) == 2
    assert "--kv-layer-map: unknown layer map 'sideways'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


def summary(delta: float, low: float, high: float, p: float = 0.5) -> dict:
    return {
        "delta_accuracy": delta,
        "delta_accuracy_ci": [low, high],
        "delta_accuracy_p": p,
        "delta_logit_diff": 4 * delta,
        "delta_logit_diff_ci": [4 * low, 4 * high],
        "n": 100,
    }


HELPS, NOTHING = summary(0.2, 0.1, 0.3, 1e-4), summary(0.0, -0.1, 0.1)


def verdict(
    *,
    ceiling=HELPS,
    fuser=HELPS,
    prefix=NOTHING,
    beyond_prefix=HELPS,
    self_reference=False,
    source="prompt",
):
    kv = {name: NOTHING for name in kv_conditions(source)} | {"oracle": summary(0.6, 0.5, 0.7)}
    kv |= {CEILING[source]: ceiling, FUSER: fuser, PREFIX: prefix}
    section = {
        "source": source,
        "max_logit_difference": [{f"{LINEAR} vs {READS_F}": 2e-6}],
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
    label, text = verdict(ceiling=NOTHING, beyond_prefix=NOTHING)
    assert label == "untestable here" and "no untrained map of it could, whatever the map" in text
    label, text = verdict(self_reference=True)
    assert label == "untestable here" and "the reference, not a channel" in text


def test_a_trained_source_is_still_tested_when_the_ceiling_does_not_help():
    """ "Whatever the map" holds for untrained maps only: a trained fuser that beats the learned prefix and
    its own shuffle is a message, whatever the receiver's own reading of the text does."""
    assert verdict(ceiling=NOTHING)[0] == "transfer helps"


def test_under_facts_the_ceiling_is_the_receivers_reading_of_f_and_a_self_pair_the_positive_control():
    label, text = verdict(source="facts")
    assert label == "transfer helps" and f"The ceiling, '{READS_F}'" in text
    label, text = verdict(source="facts", self_reference=True)
    assert label == "positive control" and "equal the ceiling's" in text and "2e-06" in text
    label, text = verdict(source="facts", beyond_prefix=NOTHING)
    assert label == "no transfer"


def test_prompt_mode_names_p_and_gold_b_an_upper_reference_not_a_ceiling():
    _, text = verdict()
    assert "The ceiling, 'receiver reads P'" in text
    assert "the upper reference 'receiver reads P + gold B' (not a ceiling" in text
