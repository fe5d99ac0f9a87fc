"""Keys and values as data (``runtime.kv_entries``), on the installed backend (run under TransformerLens 3
and 4): a model's own entries of P delivered before Q give the run of P + Q as one sequence, on a
Pythia-like model and on a grouped-query Llama-like one (rotary on both), left-padded and repeated along
the batch; a closed gate is the receiver alone and an open one the plain delivery; gradients reach the
delivered entries."""

import pytest
import torch

from mi_bridge.core.generate import left_pad
from mi_bridge.models.language import TOY_WORDS
from mi_bridge.runtime.backend import BACKEND
from mi_bridge.runtime.kv_cache import run_tokens
from mi_bridge.runtime.kv_entries import capture_kv, delivered_cache, gate_hooks

ATOL = 1e-4


def tiny_gqa(seed: int = 0):
    """A tiny Llama-architecture model (RMSNorm, SwiGLU, rotary, 4 query heads sharing 2 KV heads) on the
    installed backend: TL 3's ``HookedTransformer`` or, under TL 4, a Hugging Face Llama in a bridge."""
    torch.manual_seed(seed)
    if BACKEND.major >= 4:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=len(TOY_WORDS),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=64,
            initializer_range=0.8 / 32**0.5,  # TL 3's initialization scale: logits as far from uniform
            tie_word_embeddings=False,
            architectures=["LlamaForCausalLM"],
        )
        return BACKEND.from_hf(LlamaForCausalLM(config).eval(), None, name="tiny-llama", processing=False)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    config = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        n_heads=4,
        n_key_value_heads=2,
        d_head=8,
        d_mlp=64,
        d_vocab=len(TOY_WORDS),
        n_ctx=64,
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        final_rms=True,
        positional_embedding_type="rotary",
        rotary_dim=8,
        seed=seed,
    )
    return HookedTransformer(config).eval()


@pytest.fixture(params=["pythia-like", "gqa-llama-like"])
def model(request, tiny_model):
    return tiny_model if request.param == "pythia-like" else tiny_gqa()


def draw(shape, seed):
    return torch.randint(1, len(TOY_WORDS), shape, generator=torch.Generator().manual_seed(seed))


def closed(model) -> torch.Tensor:
    return torch.full((model.cfg.n_layers,), float("-inf"))


def test_entries_have_one_layout_with_the_kv_heads_not_the_query_heads(tiny_model):
    for model, n_kv in ((tiny_model, 4), (tiny_gqa(), 2)):
        entries = capture_kv(model, draw((2, 5), seed=0))
        assert len(entries) == model.cfg.n_layers and model.cfg.n_heads == 4
        assert all(k.shape == v.shape == (2, 5, n_kv, 8) for k, v in entries)


@pytest.mark.parametrize("copies", [1, 3])
def test_own_entries_of_p_before_q_equal_p_and_q_as_one_sequence(model, copies):
    prompt, tail = draw((2, 6), seed=1), draw((2, 4), seed=2)
    with torch.no_grad():
        whole = model(torch.cat([prompt, tail], dim=1))[:, 6:]
        cache = delivered_cache(model, capture_kv(model, prompt)).repeated(copies)
        logits = run_tokens(model, tail.repeat(copies, 1), cache)
        again = run_tokens(model, tail.repeat(copies, 1), cache)
    torch.testing.assert_close(logits, whole.repeat(copies, 1, 1), rtol=0, atol=ATOL)
    torch.testing.assert_close(again, logits, rtol=0, atol=0)  # the delivered cache is frozen
    assert cache.length == 6


def test_left_padded_prefixes_and_several_padded_tails_equal_each_row_alone(model):
    prompts = [draw((n,), seed=10 + n).tolist() for n in (2, 7, 4)]
    tails = [draw((n,), seed=20 + n).tolist() for n in (3, 1, 2)]
    tokens, mask = left_pad(prompts)
    tail_tokens, tail_mask = left_pad(tails)
    copies = 2
    with torch.no_grad():
        cache = delivered_cache(model, capture_kv(model, tokens, mask.long()), mask.long()).repeated(copies)
        logits = run_tokens(model, tail_tokens.repeat(copies, 1), cache, tail_mask.long().repeat(copies, 1))
        for row, (prompt, tail) in enumerate(zip(prompts, tails, strict=True)):
            alone = model(torch.tensor([prompt + tail]))[0, -len(tail) :]
            for copy_index in range(copies):
                got = logits[copy_index * len(prompts) + row, -len(tail) :]
                torch.testing.assert_close(got, alone, rtol=0, atol=ATOL)


def test_a_closed_gate_is_the_receiver_alone_and_an_open_one_the_plain_delivery(model):
    prompts = [draw((n,), seed=30 + n).tolist() for n in (3, 6)]
    tokens, mask = left_pad(prompts)
    tail = draw((2, 3), seed=3)
    with torch.no_grad():
        cache = delivered_cache(model, capture_kv(model, tokens, mask.long()), mask.long())
        plain = run_tokens(model, tail, cache)
        with model.hooks(fwd_hooks=gate_hooks(closed(model), cache.length)):
            shut = run_tokens(model, tail, cache)
        with model.hooks(fwd_hooks=gate_hooks(torch.zeros(model.cfg.n_layers), cache.length)):
            open_ = run_tokens(model, tail, cache)
        alone = model(tail)
    # Q runs at positions after the prefix: equal to Q at 0.. up to rounding under rotary positions
    torch.testing.assert_close(shut.log_softmax(-1), alone.log_softmax(-1), rtol=0, atol=ATOL)
    torch.testing.assert_close(open_, plain, rtol=0, atol=0)
    assert (plain - alone).abs().max() > 1e-2  # the delivered prefix does change the receiver


def test_gradients_reach_every_delivered_layer_and_the_gates(model):
    prompt, tail = draw((2, 4), seed=4), draw((2, 3), seed=5)
    with torch.no_grad():
        entries = [
            (k.clone().requires_grad_(), v.clone().requires_grad_()) for k, v in capture_kv(model, prompt)
        ]
    log_gates = torch.full((model.cfg.n_layers,), -0.5, requires_grad=True)
    cache = delivered_cache(model, entries)
    with model.hooks(fwd_hooks=gate_hooks(log_gates, cache.length)):
        run_tokens(model, tail, cache)[:, -1].logsumexp(-1).sum().backward()
    for keys, values in entries:
        assert keys.grad.abs().sum() > 0 and values.grad.abs().sum() > 0
    assert (log_gates.grad.abs() > 0).all()


def test_entries_of_the_wrong_shape_or_depth_are_refused(model):
    entries = capture_kv(model, draw((1, 3), seed=6))
    with pytest.raises(ValueError, match="layers"):
        delivered_cache(model, entries[:-1])
    wrong = [(k[..., :4], v[..., :4]) for k, v in entries]
    with pytest.raises(ValueError, match="delivered"):
        delivered_cache(model, wrong)


def test_a_site_band_leaves_every_layer_up_to_the_site_as_the_receiver_alone(model):
    """``band_gates(n, L)``: only the layers after L read the delivered positions, so the residual stream
    up to L's output is the receiver's without the prefix, and later layers do change."""
    from mi_bridge.protocols.split.kv_channel import band_gates

    prompt, tail = draw((2, 5), seed=7), draw((2, 3), seed=8)
    site, n_layers = 0, model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    with torch.no_grad():
        cache = delivered_cache(model, capture_kv(model, prompt))
        _, alone = model.run_with_cache(tail, names_filter=lambda name: name in names)
        seen = {}
        # TL 4 reports a hook by its alias name: the name is bound here, not read off the hook
        record = lambda name: lambda act, hook: seen.__setitem__(name, act.detach().clone())
        hooks = [(name, record(name)) for name in names] + gate_hooks(
            band_gates(n_layers, site), cache.length
        )
        with model.hooks(fwd_hooks=hooks):
            run_tokens(model, tail, cache)
    for layer, name in enumerate(names):
        difference = (seen[name] - alone[name]).abs().max()
        if layer <= site:
            assert difference < ATOL, (layer, difference)
        else:
            assert difference > 1e-3, layer
    assert band_gates(n_layers, None).eq(0).all()
