"""The random streams of one seed: each draws with the seed's index plus its own offset (a leaf)."""


class SeedOffset:
    """Offsets added to a seed's index so that each random stream of one seed is distinct."""

    SPLIT = 10_000
    """The train/test split of a seed's items."""
    CONTROLS = 20_000
    """The norm-matched random and shuffled control vectors."""
    NORM_ABLATION = 30_000
    """The random directions of the norm ablation."""
    USABILITY = 40_000
    """The usability bridge's minibatches and validation split."""
    FIT_ITEMS = 50_000
    """The extra bridge-fit items drawn with ``n_fit``."""
    KV_CHANNEL = 60_000
    """The KV channel's early-stopping split of the fit items and its sender-side controls."""
