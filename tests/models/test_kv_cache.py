"""The KV-cache interface (``runtime.kv_cache``) on the installed backend (CI runs this file under
TransformerLens 3 and 4): a frozen prefix serves tails of any length, repeated along the batch, from
tokens or from a residual entering layer L, with and without left padding, and every result equals the
uncached run. A hook at layer L sees the new positions only, with the uncached run's values."""

import copy

import pytest
import torch

from mi_bridge.core.capture import answer_logits
from mi_bridge.core.generate import left_pad
from mi_bridge.core.hook_names import resid_post_name
from mi_bridge.runtime.backend import BACKEND, residual_at
from mi_bridge.runtime.kv_cache import decoding_cache, prefix_cache, run_tokens
from tests.conftest import TOKENIZER_FILE
from tests.hf_cache import build_pythia_cache
from tests.models.test_backends import SMALL_NEOX

pytestmark = pytest.mark.slow
ATOL = 1e-5


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    folder = build_pythia_cache(
        tmp_path_factory.mktemp("hf"), TOKENIZER_FILE, "test/kv-neox", config=SMALL_NEOX
    )
    hf = GPTNeoXForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, add_bos_token=True)
    return BACKEND.from_hf(copy.deepcopy(hf), tokenizer, name=str(folder))


def draw(shape, seed):
    return torch.randint(1, 50000, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tail", [1, 3, 6])
@pytest.mark.parametrize("copies", [1, 3])
def test_tails_from_tokens_against_a_frozen_prefix_equal_the_uncached_run(model, tail, copies):
    tokens, layer, n_prefix = draw((2, 5 + tail), seed=tail), 1, 5
    seen = []  # TL 4 names the hook by its alias (blocks.L.hook_out): keep the values in order
    record = lambda act, hook: seen.append(act.detach().clone())
    with torch.no_grad():
        full = model.run_with_hooks(tokens, fwd_hooks=[(resid_post_name(layer), record)])
        full_state = seen.pop()
        cache = prefix_cache(model, tokens[:, :n_prefix]).repeated(copies)
        kwargs = cache.forward_kwargs(tail, from_residual=False)
        cached = model.run_with_hooks(
            tokens[:, n_prefix:].repeat(copies, 1), fwd_hooks=[(resid_post_name(layer), record)], **kwargs
        )
    torch.testing.assert_close(cached, full[:, n_prefix:].repeat(copies, 1, 1), rtol=0, atol=ATOL)
    # the hook at layer L fires on the new positions only, with the uncached run's values
    torch.testing.assert_close(seen.pop(), full_state[:, n_prefix:].repeat(copies, 1, 1), rtol=0, atol=ATOL)
    # the frozen prefix did not grow: it serves the next pass unchanged
    assert cache.length == n_prefix
    again = model(tokens[:, n_prefix:].repeat(copies, 1), **cache.forward_kwargs(tail, from_residual=False))
    torch.testing.assert_close(again, cached, rtol=0, atol=0)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_a_residual_entering_layer_l_against_the_prefix_gives_the_uncached_logits(model, layer):
    tokens, n_prefix, copies = draw((3, 9), seed=layer), 6, 2
    with torch.no_grad():
        full = model(tokens)[:, -1]
        cache = prefix_cache(model, tokens[:, :n_prefix])
        tail = residual_at(
            model,
            tokens[:, n_prefix:],
            stop_at_layer=layer + 1,
            **cache.forward_kwargs(3, from_residual=False),
        )
        logits = answer_logits(
            model, tail.repeat(copies, 1, 1), start_at_layer=layer + 1, cache=cache.repeated(copies)
        )
    # processed models centre the unembedding: compare log-probabilities
    torch.testing.assert_close(
        logits.log_softmax(-1), full.repeat(copies, 1).log_softmax(-1), rtol=0, atol=ATOL
    )


def test_a_left_padded_prefix_and_its_tails_equal_each_prompt_alone(model):
    prompts = [draw((n,), seed=10 + n).tolist() for n in (3, 7, 5)]
    tails = draw((3, 2), seed=99)
    tokens, mask = left_pad(prompts)
    seen = []
    record = lambda act, hook: seen.append(act.detach().clone())
    hook = [(resid_post_name(1), record)]
    with torch.no_grad():
        cache = prefix_cache(model, tokens, mask.long())
        assert cache.mask is not None and cache.mask.shape == (3, 7)
        # the tail's own positions are real: the interface joins them to the cached mask
        batched = model.run_with_hooks(tails, fwd_hooks=hook, **cache.forward_kwargs(2, from_residual=False))
        state = seen.pop()
        for row, prompt in enumerate(prompts):
            alone = model.run_with_hooks(torch.tensor([prompt + tails[row].tolist()]), fwd_hooks=hook)[0, -2:]
            torch.testing.assert_close(batched[row], alone, rtol=0, atol=ATOL)
            # the hook at layer L sees each padded row's tail as that prompt alone does
            torch.testing.assert_close(state[row], seen.pop()[0, -2:], rtol=0, atol=ATOL)


def test_a_decoding_cache_grows_with_each_step_and_equals_the_uncached_run(model):
    prompts = [draw((n,), seed=n).tolist() for n in (4, 6)]
    tokens, mask = left_pad(prompts)
    steps = draw((2, 3), seed=7)
    with torch.no_grad():
        cache = decoding_cache(model, 2, tokens.device)
        run_tokens(model, tokens, cache, mask.long())
        for step in range(3):
            logits = run_tokens(model, steps[:, step : step + 1], cache, torch.ones(2, 1, dtype=torch.long))
            assert cache.length == 6 + step + 1
            for row, prompt in enumerate(prompts):
                alone = model(torch.tensor([prompt + steps[row, : step + 1].tolist()]))[0, -1]
                torch.testing.assert_close(logits[row, -1], alone, rtol=0, atol=ATOL)


@pytest.mark.parametrize("layer", [0, 2])
def test_a_residual_tail_against_a_left_padded_prefix_equals_each_prompt_alone(model, layer):
    prompts = [draw((n,), seed=20 + n).tolist() for n in (2, 6, 4)]
    tails = draw((3, 3), seed=98)
    tokens, mask = left_pad(prompts)
    with torch.no_grad():
        cache = prefix_cache(model, tokens, mask.long())
        tail = residual_at(
            model, tails, stop_at_layer=layer + 1, **cache.forward_kwargs(3, from_residual=False)
        )
        copies = 2
        logits = answer_logits(
            model, tail.repeat(copies, 1, 1), start_at_layer=layer + 1, cache=cache.repeated(copies)
        )
        for row, prompt in enumerate(prompts):
            alone = model(torch.tensor([prompt + tails[row].tolist()]))[0, -1].log_softmax(-1)
            for copy_index in range(copies):
                got = logits[copy_index * 3 + row].log_softmax(-1)
                torch.testing.assert_close(got, alone, rtol=0, atol=ATOL)


def test_a_repeated_cache_is_not_repeated_again(model):
    cache = prefix_cache(model, draw((2, 4), seed=5)).repeated(2)
    with pytest.raises(ValueError, match="not repeated yet"):
        cache.repeated(2)
