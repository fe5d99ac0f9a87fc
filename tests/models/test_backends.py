"""The backend seam's oracle: on one small GPT-NeoX checkpoint, the hooked model (TL 3's HookedTransformer
or TL 4's TransformerBridge, whichever is installed) computes what plain Hugging Face computes, and an
injection at ``blocks.{L}.hook_resid_post`` equals the same edit made by a torch hook on HF's layer L.
Run under both TransformerLens versions, this makes both backends agree with each other."""

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mi_bridge.core.hook_names import resid_post_name
from mi_bridge.runtime.backend import BACKEND, HookedModel, residual_at
from mi_bridge.runtime.neox import neox_from_hooked
from tests.conftest import TOKENIZER_FILE
from tests.hf_cache import build_pythia_cache
from tests.oracles import assert_evaluator_equals_hooked_runs

pytestmark = pytest.mark.slow

SMALL_NEOX = dict(
    architectures=["GPTNeoXForCausalLM"],
    model_type="gpt_neox",
    hidden_act="gelu",
    hidden_size=64,
    intermediate_size=256,
    num_attention_heads=4,
    num_hidden_layers=3,
    layer_norm_eps=1e-5,
    max_position_embeddings=128,
    rotary_emb_base=10000,
    rotary_pct=0.25,
    tie_word_embeddings=False,
    use_parallel_residual=True,
    vocab_size=50304,
    bos_token_id=0,
    eos_token_id=0,
)
TEXTS = ["Alice's friend is Bob. Bob lives in Paris.", "The cat sat on the mat because it was warm."]
ATOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random GPT-NeoX checkpoint folder with the real GPT-NeoX tokenizer."""
    return build_pythia_cache(
        tmp_path_factory.mktemp("hf"), TOKENIZER_FILE, "test/small-neox", config=SMALL_NEOX
    )


@pytest.fixture(scope="module")
def hf(checkpoint):
    from transformers import GPTNeoXForCausalLM

    return GPTNeoXForCausalLM.from_pretrained(checkpoint, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint, add_bos_token=True)


@pytest.fixture(scope="module")
def tokens(tokenizer):
    ids = [tokenizer(text)["input_ids"][:10] for text in TEXTS]  # one length, so no padding
    return torch.tensor(ids)


def hooked(hf, tokenizer, checkpoint, processing: bool) -> HookedModel:
    return BACKEND.from_hf(copy.deepcopy(hf), tokenizer, name=str(checkpoint), processing=processing)


@pytest.fixture(scope="module")
def processed(hf, tokenizer, checkpoint):
    return hooked(hf, tokenizer, checkpoint, processing=True)


@pytest.fixture(scope="module")
def unprocessed(hf, tokenizer, checkpoint):
    return hooked(hf, tokenizer, checkpoint, processing=False)


def hf_logits(hf, tokens, layer: int | None = None, vector=None):
    """HF's logits, with ``vector`` added to layer ``layer``'s output at the last position."""

    def add(module, inputs, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        hidden[:, -1] += vector
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    if layer is None:
        with torch.no_grad():
            return hf(tokens).logits
    handle = hf.gpt_neox.layers[layer].register_forward_hook(add)
    try:
        with torch.no_grad():
            return hf(tokens).logits
    finally:
        handle.remove()


def test_the_seam_reports_the_installed_backend(processed, tokenizer, tokens):
    import transformer_lens

    assert BACKEND.major in (3, 4)
    expected = "HookedTransformer" if BACKEND.major == 3 else "TransformerBridge"
    assert type(processed).__name__ == expected
    assert isinstance(processed, HookedModel)
    assert transformer_lens.__name__ == "transformer_lens"
    cfg = processed.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.d_vocab) == (3, 64, 50304)
    assert processed.tokenizer(TEXTS[0])["input_ids"] == tokenizer(TEXTS[0])["input_ids"]
    _, cache = processed.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_resid_post"))
    assert {resid_post_name(layer) for layer in range(3)} <= set(cache.keys())
    assert cache[resid_post_name(2)].shape == (2, 10, 64)


def test_unprocessed_logits_equal_hugging_face(unprocessed, hf, tokens):
    with torch.no_grad():
        ours = unprocessed(tokens)
    torch.testing.assert_close(ours, hf_logits(hf, tokens), rtol=0, atol=ATOL)


def test_processed_log_probs_equal_hugging_face(processed, hf, tokens):
    # the centred unembedding shifts each position's logits by one constant: compare log-probabilities
    with torch.no_grad():
        ours = processed(tokens).log_softmax(-1)
    torch.testing.assert_close(ours, hf_logits(hf, tokens).log_softmax(-1), rtol=0, atol=ATOL)


@pytest.mark.parametrize("processing", [False, True])
def test_one_injection_equals_a_torch_hook_on_hugging_face(processing, processed, unprocessed, hf, tokens):
    model = processed if processing else unprocessed
    layer, vector = 1, 3.0 * torch.randn(64)

    def add(act, hook):
        act = act.clone()
        act[:, -1] += vector
        return act

    with torch.no_grad():
        ours = model.run_with_hooks(tokens, fwd_hooks=[(resid_post_name(layer), add)])
        clean = model(tokens)
    theirs = hf_logits(hf, tokens, layer, vector)
    # LayerNorm ignores the mean that centring removes, so the same vector has the same effect
    torch.testing.assert_close(ours.log_softmax(-1), theirs.log_softmax(-1), rtol=0, atol=ATOL)
    if not processing:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)
    assert (ours[:, -1] - clean[:, -1]).abs().max() > 100 * ATOL  # the injection did something
    torch.testing.assert_close(ours[:, :-1], clean[:, :-1], rtol=0, atol=ATOL)  # and only at the end


def test_residual_at_means_what_tl3_stop_at_layer_means(processed, tokens):
    with torch.no_grad():
        _, cache = processed.run_with_cache(tokens)
        for stop in (1, 2, 3):
            here = residual_at(processed, tokens, stop_at_layer=stop)
            torch.testing.assert_close(here, cache[resid_post_name(stop - 1)], rtol=0, atol=ATOL)
        final = residual_at(processed, cache[resid_post_name(0)], start_at_layer=1, stop_at_layer=3)
        torch.testing.assert_close(final, cache[resid_post_name(2)], rtol=0, atol=ATOL)
        unchanged = residual_at(processed, final, start_at_layer=3, stop_at_layer=3)
        assert unchanged is final
        logits = processed.unembed(processed.ln_final(final[:, -1:]))[:, 0]
        torch.testing.assert_close(logits, processed(tokens)[:, -1], rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["toy-sender", "toy-receiver"])
def test_the_toy_pair_runs_as_a_gpt_neox_checkpoint(name):
    """The shipped toy weights (HookedTransformer keys) as GPT-NeoX with an unembedding bias compute what
    the toy computes: its HookedTransformer under TL 3, the unprocessed bridge of that GPT-NeoX under TL 4."""
    from mi_bridge.models.language import TOY_WORDS
    from mi_bridge.models.toy import TOY_MODELS, shipped_folder

    recipe = TOY_MODELS[name]
    state_dict = load_file(shipped_folder(name) / "model.safetensors")
    neox = neox_from_hooked(state_dict, n_heads=recipe.n_heads, n_ctx=128)
    tokens = torch.randint(0, len(TOY_WORDS), (4, 30))
    with torch.no_grad():
        theirs = neox(tokens).logits
    if BACKEND.major < 4:  # TL 3 runs the toy as a HookedTransformer (its GPT-NeoX converter knows no b_U)
        from mi_bridge.models.sources.toy import load_toy_model

        model = load_toy_model(name)
    else:
        model = BACKEND.from_hf(copy.deepcopy(neox), None, name=name, processing=False)
    assert model.cfg.n_layers == recipe.n_layers and model.cfg.d_model == recipe.d_model
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), theirs, rtol=0, atol=ATOL)


@pytest.mark.parametrize("layer", [0, 2])  # 2: the last block, where TL 4's stop_at_layer gives logits
@pytest.mark.parametrize("position", [0, 5, 9])
def test_the_evaluator_equals_one_full_hooked_run_on_either_backend(processed, tokens, layer, position):
    n, k = tokens.shape[0], 3
    candidates = torch.randint(0, 50000, (n, k))
    gold = torch.randint(0, k, (n,))
    vector = 3.0 * torch.randn(n, 64)
    assert_evaluator_equals_hooked_runs(
        processed, tokens, candidates, gold, vector, layer=layer, position=position, atol=ATOL, rtol=0
    )
