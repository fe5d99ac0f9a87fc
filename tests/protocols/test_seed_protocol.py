"""The seed paper's protocol: released data verified, metrics as defined, injections exact against a plain
TransformerLens hook, the SGD-L2 bridge recovers a planted map, and an offline end-to-end run whose audit
flags the random-weight task as not valid."""

import json
import os
from pathlib import Path

import pytest
import torch

from mi_bridge.bridges.ridge import LinearBridge, fit_report
from mi_bridge.core.generate import apply_repetition_penalty, banned_ngram_tokens, greedy_generate
from mi_bridge.core.hook_names import resid_post_name
from mi_bridge.errors import UserError
from mi_bridge.protocols.seed.experiment import injected_state, prefill_hook
from mi_bridge.protocols.seed.metrics import boundary_contains, legacy_contains, normalized_exact_match
from mi_bridge.protocols.seed.task import EVAL_SHA256, answer_fact, data_dir, load_eval, load_published
from tests.conftest import TOKENIZER_FILE
from tests.hf_cache import build_pythia_cache


@pytest.fixture
def one_thread():
    """Tiny models on a shared, loaded machine run several times faster without intra-mode threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_shipped_eval_set_is_verified_by_its_hash(tmp_path):
    items = load_eval()
    assert len(items) == 396 and items[0].answer == "Asia"
    damaged = tmp_path / "clean_eval.jsonl"
    data = (data_dir() / "clean_eval.jsonl").read_bytes()
    damaged.write_bytes(data.replace(b"Asia", b"Asja", 1))
    with pytest.raises(UserError, match="SHA-256"):
        load_eval(damaged)
    assert (data_dir() / "LICENSE").read_text().startswith("Apache License")
    assert EVAL_SHA256 in (data_dir() / "SOURCE.md").read_text()
    assert set(load_published()["conditions"]) >= {"no injection", "replace", "zero replacement"}
    # the oracle's answer-bearing fact exists and holds the answer for every released item
    assert all(item.answer.lower() in answer_fact(item).lower() for item in items)


def test_each_metric_rule_on_hand_made_examples():
    # normalized exact match: case, punctuation and spaces are ignored, nothing else is
    assert normalized_exact_match("  Asia. ", "asia")
    assert not normalized_exact_match("Asia is big", "Asia")
    # word-boundary contains: the normalized answer as a whole phrase, not inside a word
    assert boundary_contains("It lies in  Asia, of course", "Asia")
    assert not boundary_contains("Eurasian steppe", "Asia")
    assert boundary_contains("they said the U.S. did", "U.S.")  # both sides lose their punctuation
    # legacy contains: a plain lowercase substring (so it counts "Asia" inside "Eurasian")
    assert legacy_contains("Eurasian steppe", "Asia")
    assert not legacy_contains("the US did", "U.S.")


def test_logits_processors_follow_hugging_face_semantics():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    out = apply_repetition_penalty(logits, [[0, 1]], 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -4.0, 1.0, 0.5]]))
    # the 3-gram (5, 6, 7) occurred: after (..., 5, 6) the token 7 is banned, nothing else
    assert banned_ngram_tokens([5, 6, 7, 1, 5, 6], 3) == {7}
    assert banned_ngram_tokens([5, 6, 7, 1], 3) == set()


def test_cached_greedy_decoding_equals_full_recomputation(tiny_model, one_thread):
    tokens = torch.randint(1, tiny_model.cfg.d_vocab, (3, 7), generator=torch.Generator().manual_seed(0))
    fast = greedy_generate(
        tiny_model, tokens, max_new_tokens=5, eos_token_id=None, penalty=1.0, no_repeat_ngram=0
    )
    sequence = tokens.clone()
    for _ in range(5):
        with torch.no_grad():
            sequence = torch.cat([sequence, tiny_model(sequence)[:, -1].argmax(-1, keepdim=True)], 1)
    assert fast == sequence[:, 7:].tolist()


@pytest.mark.parametrize(("mode", "alpha"), [("replace", 1.0), ("add-last", 0.01)])
def test_prefill_injection_matches_a_plain_forward_hook(tiny_model, mode, alpha, one_thread):
    layer = 1
    tokens = torch.randint(1, tiny_model.cfg.d_vocab, (2, 6), generator=torch.Generator().manual_seed(1))
    v = torch.randn(2, 6, tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(2))
    _, clean = tiny_model.run_with_cache(tokens)
    h = clean[resid_post_name(layer)]

    def plain(act, hook):  # the edit written out by hand
        if mode == "replace":
            return v.clone()
        return act + alpha * v[:, -1:, :]

    seen = {}  # keyed here: TL 4 names a hook by its alias (blocks.L.hook_out)
    record_as = lambda key: lambda act, hook: seen.__setitem__(key, act.clone())
    name = resid_post_name(layer)
    ours = tiny_model.run_with_hooks(
        tokens,
        fwd_hooks=[
            (name, prefill_hook(v, mode, alpha)),
            (name, record_as(name)),
            (resid_post_name(0), record_as(resid_post_name(0))),
        ],
    )
    theirs = tiny_model.run_with_hooks(tokens, fwd_hooks=[(name, plain)])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(seen[resid_post_name(0)], clean[resid_post_name(0)], rtol=0, atol=0)
    change = (seen[name] - h).norm(dim=-1)
    if mode == "replace":
        torch.testing.assert_close(seen[name], v)  # every position replaced
    else:  # every position moved by exactly 0.01 * |v_last|
        torch.testing.assert_close(change, 0.01 * v[:, -1].norm(dim=-1, keepdim=True).expand(2, 6))
    torch.testing.assert_close(injected_state(h, v, mode, alpha), seen[name])


def test_fit_report_has_the_papers_l2_metrics_beside_trivial_predictors():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1500, 10, generator=g)
    y = x @ torch.randn(10, 16, generator=g) + 30.0  # a large shared offset: anisotropy
    bridge = LinearBridge.fit(x[:1000], y[:1000])
    report = fit_report(bridge, x[:1000], y[:1000], x[1000:], y[1000:], seed=0)
    for predictor in report.values():
        assert {"l2_cosine", "l2_r2"} <= set(predictor)
    assert report["bridge"]["l2_r2"] > 0.99
    # the receiver-mean direction gets a high L2 cosine from the offset alone, and no R²
    assert report["receiver_mean"]["l2_cosine"] > 0.9
    assert abs(report["receiver_mean"]["l2_r2"]) < 0.05


@pytest.fixture(scope="module")
def pythia_cache() -> Path:
    return build_pythia_cache(Path(os.environ["HF_HOME"]), TOKENIZER_FILE)


@pytest.mark.slow
def test_the_seed_protocol_runs_end_to_end_and_its_audit_flags_the_task(pythia_cache, tmp_path, one_thread):
    from mi_bridge.run import main

    out = tmp_path / "run"
    argv = ["--protocol", "seed", "--pair", "pythia", "--sender", "pythia-14m", "--receiver", "pythia-14m"]
    argv += ["--n-items", "3", "--n-fit", "3", "--seeds", "1", "--max-new-tokens", "2", "--bridge", "both"]
    assert main([*argv, "--n-bootstrap", "200", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert results["layers"] == {"sender": 4, "receiver": 4}  # 67% depth of 6 blocks
    names = {c["name"] for c in results["conditions"]}
    assert {
        "no injection",
        "text relay",
        "additive",
        "replace",
        "replace [ridge]",
        "zero replacement",
    } <= names
    assert all(c["n"] == 3 for c in results["conditions"])
    # self-injecting the receiver's own states changes nothing, token for token
    assert predictions["receiver self-inject"] == predictions["no injection"]
    audit = results["audit"]
    assert audit["information_asymmetry"]["identical_inputs"] == 1.0
    assert not audit["information_asymmetry"]["asymmetric"]
    assert audit["injection_strength"]["additive"]["near_null"]
    assert not audit["injection_strength"]["scale-corrected"]["near_null"]
    assert audit["validity"]["valid"] is False  # random weights cannot use any fact
    no_injection = next(c for c in results["conditions"] if c["name"] == "no injection")
    assert no_injection["published"]["boundary_contains"] == 0.0884
    assert "Task not valid" in (out / "report.md").read_text()
    assert results["verdict_label"] == "untestable here"
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "results.json",
        "report.md",
        "figure.png",
        "predictions.json",
        "bridge",
        "items.parquet",
    }
    import pandas as pd

    table = pd.read_parquet(out / "items.parquet")
    for name, texts in predictions.items():  # every prediction, run by run, with its score
        rows = table[table.condition == name]
        assert list(rows.chosen) == [text for run in texts for text in run], name
    assert set(table.condition) == names
    # every bridge of the run is published, per kind and seed, and loads back as its kind
    from mi_bridge.bridges.base import load_bridge

    assert {p.parent.name for p in (out / "bridge").glob("*/seed*")} == {"sgd-l2", "ridge"}
    assert load_bridge(next((out / "bridge" / "sgd-l2").iterdir())).kind == "sgd-l2"


def test_the_seed_protocol_refuses_the_toy_pair(tmp_path, capsys):
    from mi_bridge.run import main

    assert main(["--protocol", "seed", "--out", str(tmp_path / "out")]) == 2
    assert "--pair pythia" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# The analyses under --protocol seed


def test_teacher_forced_answer_scores_match_token_by_token_forwards(tiny_model, one_thread):
    """``answer_logprobs`` against an independent computation: one forward per answer token, with a plain
    TransformerLens hook overwriting the prompt positions only. Catches an off-by-one in the answer
    positions and an injection that leaks into them."""
    from mi_bridge.protocols.seed.analysis import answer_logprobs

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, tiny_model.cfg.d_vocab, (n,), generator=g).tolist() for n in (5, 5, 7)]
    answers = [torch.randint(0, tiny_model.cfg.d_vocab, (n,), generator=g).tolist() for n in (2, 3, 2)]
    vectors = [torch.randn(len(p), tiny_model.cfg.d_model, generator=g) for p in prompts]
    layer = 1

    @torch.no_grad()
    def by_token(i: int, injected: bool) -> float:
        total = 0.0
        for j, token in enumerate(answers[i]):
            tokens = torch.tensor([prompts[i] + answers[i][:j]])

            def overwrite(act, hook):
                act[:, : len(prompts[i])] = vectors[i]
                return act

            hooks = [(resid_post_name(layer), overwrite)] if injected else []
            logits = tiny_model.run_with_hooks(tokens, fwd_hooks=hooks)[0, -1]
            total += float(logits.double().log_softmax(-1)[token])
        return total

    for injected in (False, True):
        got = answer_logprobs(
            tiny_model, layer, prompts, answers, 2, vectors if injected else None, "replace"
        )
        want = [by_token(i, injected) for i in range(len(prompts))]
        assert got == pytest.approx(want, abs=1e-4)
    plain = answer_logprobs(tiny_model, layer, prompts, answers, 2)
    assert not answer_logprobs(tiny_model, layer, prompts, answers, 2, vectors, "replace") == pytest.approx(
        plain
    )
    # adding alpha = 0 of any vector is no injection
    assert answer_logprobs(tiny_model, layer, prompts, answers, 2, vectors, "add", 0.0) == pytest.approx(
        plain
    )


@pytest.mark.slow
def test_the_analyses_run_under_the_seed_protocol_and_say_where_they_do_not_apply(
    pythia_cache, tmp_path, one_thread
):
    from mi_bridge.analyses.runner import ORDER, main

    out = tmp_path / "analyses"
    argv = "all --protocol seed --pair pythia --sender pythia-14m --receiver pythia-14m --n-items 4".split()
    argv += "--n-fit 3 --seeds 1 --max-new-tokens 2 --n-bootstrap 200".split()
    assert main([*argv, "--scales", "0.5,1,2", "--out", str(out)]) == 0
    applied = {"logit_lens", "norm_ablation"}
    for name in applied:
        payload = json.loads((out / name / "results.json").read_text())
        site = payload["site"]
        assert site["class"] == "not applicable" and site["protocol"] == "seed"
        # the receiver's own states at every prompt position are no injection (up to float rounding)
        assert abs(site["self_inject_logprob"]["mean"]) < 1e-4 and site["hook_exact"]
        assert site["validity"]["valid"] is False  # random weights: the oracle does not help
        assert payload["analysis"]["verdict"] == "inconclusive"  # withheld where nothing can be read
        assert (out / name / "figure.png").stat().st_size > 0
    conditions = json.loads((out / "norm_ablation" / "results.json").read_text())["analysis"]["data"][
        "conditions"
    ]
    by_name = {c["name"]: c for c in conditions}
    assert abs(by_name["self-patch x1 replace"]["delta_logprob"]) < 1e-4  # own states: nothing changes
    assert by_name["translated x1 replace"]["n"] == 4
    combined = (out / "report.md").read_text()
    for name in set(ORDER) - applied:
        assert f"{name} does not apply under --protocol seed" in combined
        assert not (out / name).exists()


def test_an_analysis_that_does_not_apply_to_the_seed_protocol_says_why_in_one_line(capsys, tmp_path):
    from mi_bridge.analyses.runner import main

    out = tmp_path / "x"
    assert main(["lookup_phase", "--protocol", "seed", "--pair", "pythia", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "lookup_phase does not apply under --protocol seed: the site classes need" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.slow
def test_seed_prompts_and_answers_are_encoded_without_bos(pythia_cache):
    """The paper's tokenizer adds no BOS; the models' tokenizer is built with add_bos_token=True, so the
    seed protocol must switch special tokens off (else every answer would start with <|endoftext|>)."""
    from mi_bridge.models.sources.base import hf_tokenizer
    from mi_bridge.protocols.seed.experiment import encode

    tokenizer = hf_tokenizer("EleutherAI/pythia-14m", None)
    assert tokenizer(" Paris")["input_ids"][0] == tokenizer.bos_token_id  # what the seed path must avoid
    prompt, answer = encode(tokenizer, ["Context: a\nQ: b\nA:", " Paris"])
    assert tokenizer.bos_token_id not in prompt + answer
    assert tokenizer.decode(prompt) == "Context: a\nQ: b\nA:" and tokenizer.decode(answer) == " Paris"


def test_the_seed_runs_verdict_label_reads_translated_conditions_and_the_asymmetry():
    from mi_bridge.protocols.seed.report import verdict_label

    def results(valid: bool, asymmetric: bool, helped: str | None, p: float = 0.001) -> dict:
        conditions = [
            {
                "name": name,
                "condition": name,
                "delta_boundary_contains": {"mean": 0.1, "ci": [0.05, 0.15], "p": p}
                if name == helped
                else {"mean": 0.0, "ci": [-0.05, 0.05], "p": 0.6},
            }
            for name in (
                "no injection",
                "additive",
                "best alpha (0.3)",
                "scale-corrected",
                "replace",
                "shuffled translation",
            )
        ]
        audit = {"validity": {"valid": valid}, "information_asymmetry": {"asymmetric": asymmetric}}
        return {"audit": audit, "conditions": conditions}

    assert verdict_label(results(False, True, "replace")) == "untestable here"
    assert verdict_label(results(True, False, "replace")) == "transfer helps"
    # its CI clears 0, but at p = 0.02 it does not survive Holm over the 4 translated conditions (0.08)
    assert verdict_label(results(True, True, "replace", p=0.02)) == "no transfer"
    assert verdict_label(results(True, True, "replace", p=0.01)) == "transfer helps"
    assert (
        verdict_label(results(True, True, "shuffled translation")) == "no transfer"
    )  # a control is no transfer
    assert verdict_label(results(True, True, None)) == "no transfer"
    assert (
        verdict_label(results(True, False, None)) == "untestable here"
    )  # the released protocol: null by construction


def test_runs_of_one_item_set_are_averaged_per_item_not_pooled():
    """Three bridge runs score the same items: the CI and the sign test must count each item once.
    Three identical runs are then exactly one run; pooled, they would triple n and narrow the CI."""
    import numpy as np

    from mi_bridge.protocols.seed import audit
    from mi_bridge.stats import paired_bootstrap_ci, sign_test_p

    rng = np.random.default_rng(0)
    baseline, run = [rng.random(40) < 0.3], rng.random(40) < 0.5
    once, thrice = audit.paired_differences([run], baseline), audit.paired_differences([run] * 3, baseline)
    assert thrice.shape == (40,) and np.array_equal(once, thrice)
    assert sign_test_p(thrice) == sign_test_p(once)
    assert paired_bootstrap_ci(thrice) == paired_bootstrap_ci(once)
    with pytest.raises(ValueError, match="different numbers of items"):
        audit.per_item_mean([np.zeros(3), np.zeros(4)])
