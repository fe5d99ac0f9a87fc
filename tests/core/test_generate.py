"""Greedy decoding batched across prompt lengths (left padding) on the installed backend's KV cache (CI
runs this file under TransformerLens 3 and 4): the same tokens as each prompt decoded alone, the same
tokens as Hugging Face's ``generate`` with the paper's processors, and a prefill injection that lands on
each padded row's own positions."""

import copy

import pytest
import torch

from mi_bridge.core.generate import greedy_generate, left_pad, right_aligned
from mi_bridge.core.hook_names import resid_post_name
from mi_bridge.protocols.seed.experiment import prefill_hook
from mi_bridge.runtime.backend import BACKEND
from tests.conftest import TOKENIZER_FILE
from tests.hf_cache import build_pythia_cache
from tests.models.test_backends import SMALL_NEOX

pytestmark = pytest.mark.slow
LENGTHS = (3, 8, 5, 1, 6)


@pytest.fixture(scope="module")
def hf_and_folder(tmp_path_factory):
    from transformers import GPTNeoXForCausalLM

    folder = build_pythia_cache(
        tmp_path_factory.mktemp("hf"), TOKENIZER_FILE, "test/gen-neox", config=SMALL_NEOX
    )
    return GPTNeoXForCausalLM.from_pretrained(folder, attn_implementation="eager").eval(), folder


@pytest.fixture(scope="module")
def model(hf_and_folder):
    """Unprocessed, so that its logits are Hugging Face's (the repetition penalty is not shift-invariant)."""
    from transformers import AutoTokenizer

    hf, folder = hf_and_folder
    tokenizer = AutoTokenizer.from_pretrained(folder, add_bos_token=True)
    return BACKEND.from_hf(copy.deepcopy(hf), tokenizer, name=str(folder), processing=False)


def prompts(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 50000, (n,), generator=g).tolist() for n in LENGTHS]


def test_left_padding_puts_each_prompt_at_the_end_of_its_row():
    tokens, mask = left_pad([[5, 6], [7, 8, 9], [4]], pad_id=0)
    assert tokens.tolist() == [[0, 5, 6], [7, 8, 9], [0, 0, 4]]
    assert mask.tolist() == [[False, True, True], [True, True, True], [False, False, True]]
    v = right_aligned([torch.ones(2, 1), 2 * torch.ones(3, 1), 3 * torch.ones(1, 1)], 3)
    assert v[..., 0].tolist() == [[0, 1, 1], [2, 2, 2], [0, 0, 3]]


def test_a_batch_across_lengths_decodes_what_each_prompt_decodes_alone(model):
    batch = prompts()
    together = greedy_generate(model, batch, max_new_tokens=8, eos_token_id=None)
    alone = [greedy_generate(model, [p], max_new_tokens=8, eos_token_id=None)[0] for p in batch]
    assert together == alone
    assert all(len(tokens) == 8 for tokens in together)


def test_decoding_equals_hugging_face_generate_with_the_papers_processors(model, hf_and_folder):
    hf, _ = hf_and_folder
    batch = prompts(seed=1)
    ours = greedy_generate(model, batch, max_new_tokens=10, eos_token_id=None)
    for prompt, tokens in zip(batch, ours, strict=True):
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=False,
                repetition_penalty=1.3,
                no_repeat_ngram_size=3,
                max_new_tokens=10,
                min_new_tokens=10,
                pad_token_id=0,
            )
        assert tokens == out[0, len(prompt) :].tolist()


@pytest.mark.parametrize(("mode", "alpha"), [("replace", 1.0), ("add-last", 0.5), ("blend", 0.3)])
def test_a_prefill_injection_lands_on_each_padded_rows_own_positions(model, mode, alpha):
    batch, layer = prompts(seed=2), 1
    g = torch.Generator().manual_seed(3)
    vectors = [3 * torch.randn(len(p), model.cfg.d_model, generator=g) for p in batch]
    width = max(LENGTHS)
    hooks = [(resid_post_name(layer), prefill_hook(right_aligned(vectors, width), mode, alpha))]
    together = greedy_generate(model, batch, max_new_tokens=5, eos_token_id=None, prefill_hooks=hooks)
    for prompt, v, tokens in zip(batch, vectors, together, strict=True):
        own = [(resid_post_name(layer), prefill_hook(v[None], mode, alpha))]
        assert (
            tokens
            == greedy_generate(model, [prompt], max_new_tokens=5, eos_token_id=None, prefill_hooks=own)[0]
        )
    plain = greedy_generate(model, batch, max_new_tokens=5, eos_token_id=None)
    assert together != plain  # the injection did something


def test_the_batch_stops_once_every_row_has_ended(model):
    prompt = prompts(seed=4)[1]
    first = greedy_generate(model, [prompt], max_new_tokens=1, eos_token_id=None)[0][0]
    calls = []
    count = lambda act, hook: calls.append(act.shape[1])
    # two rows that each end at their first token: nothing is returned, and no step runs after the prefill
    with model.hooks(fwd_hooks=[(resid_post_name(0), count)]):
        out = greedy_generate(model, [prompt, prompt], max_new_tokens=6, eos_token_id=first)
    assert out == [[], []] and calls == [len(prompt)]


@pytest.mark.parametrize(("penalty", "n"), [(1.3, 3), (2.0, 1), (1.0, 0), (1.3, 2)])
def test_the_incremental_processors_choose_what_the_pure_ones_choose(penalty, n):
    from mi_bridge.core.generate import Processors, next_tokens

    g = torch.Generator().manual_seed(n)
    sequences = [torch.randint(0, 12, (length,), generator=g).tolist() for length in (0, 1, 5, 9)]
    processors = Processors(sequences, 12, "cpu", penalty=penalty, no_repeat_ngram=n)
    for _ in range(15):  # a small vocabulary: repeats, penalties and bans all happen
        logits = torch.randn(4, 12, generator=g) * 3
        expected = next_tokens(logits, sequences, penalty=penalty, no_repeat_ngram=n)
        choice = processors.choose(logits.clone())
        assert choice.tolist() == expected.tolist()
        for row, token in enumerate(choice.tolist()):
            sequences[row].append(token)
        processors.append(choice)
