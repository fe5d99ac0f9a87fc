"""Hook names: everything downstream addresses a model's residual stream by TransformerLens hook name only."""

from transformer_lens.utilities import get_act_name


def resid_post_name(layer: int) -> str:
    """``blocks.{layer}.hook_resid_post``."""
    return get_act_name("resid_post", layer)
