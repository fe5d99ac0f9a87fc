"""Per-seed preparation shared by the split protocol's experiment and every analysis: items, the
train/test split, cached states (``mi_bridge.core.store``) and bridges."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_bridge import __version__
from mi_bridge.bridges.ridge import LinearBridge
from mi_bridge.config import ExperimentConfig
from mi_bridge.core.capture import capture_resid_post
from mi_bridge.core.hook_names import resid_post_name
from mi_bridge.core.store import CACHE_VERSION, ActivationStore
from mi_bridge.errors import UserError
from mi_bridge.models.language import relay_tokens
from mi_bridge.models.loading import ModelPair
from mi_bridge.models.sources import identity
from mi_bridge.models.task import TaskItems, sample_items
from mi_bridge.runtime.backend import cache_key_tag
from mi_bridge.seeds import SeedOffset


def split(n_items: int, n_test: int, seed: int) -> tuple[Int[Tensor, " n_fit"], Int[Tensor, " n_test"]]:
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(SeedOffset.SPLIT + seed))
    return order[n_test:], order[:n_test]


@dataclass
class SeedContext:
    """One seed's items, train/test split and cached states for one model pair."""

    config: ExperimentConfig
    pair: ModelPair
    seed: int
    store: ActivationStore
    items: TaskItems = field(init=False)
    """The items in the receiver's tokens."""
    sender_items: TaskItems = field(init=False)
    """The same items in the sender's tokens (the same object when both models share a tokenizer)."""
    fit_idx: Tensor = field(init=False)
    test_idx: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.items = self._sample(self.pair.language)
        self.fit_idx, self.test_idx = split(self.config.n_items, self.config.n_test, self.seed)
        if self.config.n_fit is not None:  # fit items of their own; the held-out items stay the same
            self.fit_idx = torch.arange(self.config.n_items, self.config.n_items + self.config.n_fit)
        shared = self.pair.sender_language is self.pair.language
        # Both languages hold the same entities in the same order, so one seed draws the same items.
        self.sender_items = self.items if shared else self._sample(self.pair.sender_language)

    def _sample(self, language) -> TaskItems:
        items = sample_items(language, k=self.config.k, n_items=self.config.n_items, seed=self.seed)
        if self.config.n_fit is None:
            return items
        extra = sample_items(
            language, k=self.config.k, n_items=self.config.n_fit, seed=SeedOffset.FIT_ITEMS + self.seed
        )
        return items.join(extra)

    @property
    def test(self) -> TaskItems:
        return self.items.subset(self.test_idx)

    @property
    def sender_test(self) -> TaskItems:
        """The held-out items in the sender's tokens: its answer candidates are sender token ids."""
        return self.sender_items.subset(self.test_idx)

    def position(self, site: str | None = None) -> int:
        site = site or self.config.options.position
        if site not in ("slot", "final"):
            raise UserError(f"unknown position {site!r}; choose slot or final")
        return self.items.slot_position if site == "slot" else self.items.final_position

    def _key(self, role: str, prompt: str) -> str:
        exact = self.pair.sender_identity if role == "sender" else self.pair.receiver_identity
        model = self.pair.sender if role == "sender" else self.pair.receiver
        language = self.pair.sender_language if role == "sender" else self.pair.language
        what = {
            "language": language.name,
            "prompt": prompt,
            "k": self.config.k,
            "n_items": self.config.n_items,
            "seed": self.seed,
        }
        if self.config.n_fit is not None:  # extra fit items change the items behind the key
            what["n_fit"] = self.config.n_fit
        # Unknown checkpoint: a key for this process only (the loaded object), never stored on disk.
        model_key = identity.key_material(exact) if exact is not None else {"unresolved": id(model)}
        blob = json.dumps([CACHE_VERSION, __version__, model_key, what], sort_keys=True)
        blob += cache_key_tag()  # never share a state across the backends
        key = hashlib.sha256(blob.encode()).hexdigest()[:20]
        self.store.describe(key, None if exact is None else {"model": exact, **what})
        return key

    def _tokens(self, prompt: str) -> Tensor:
        return {
            "sender": self.sender_items.sender_tokens,
            "placeholder": self.items.placeholder_tokens,
            "oracle": self.items.oracle_tokens,
            "counterfactual": self.items.counterfactual_tokens,
            "context-free": self.items.context_free_tokens,
        }[prompt]

    def states(
        self, role: str, layers: Sequence[int], prompt: str, position: int
    ) -> dict[int, Float[Tensor, "n_items d_model"]]:
        """States of ``role``'s model on ``prompt`` at ``position`` for several layers (one pass)."""
        model = self.pair.sender if role == "sender" else self.pair.receiver
        position = position % self._tokens(prompt).shape[1]
        return self.store.states(
            self._key(role, prompt), model, self._tokens(prompt), layers, position, self.config.batch_size
        )

    def sender_states(self, layers: Sequence[int]) -> dict[int, Float[Tensor, "n_items d_sender"]]:
        return self.states("sender", layers, "sender", -1)

    def receiver_states(
        self, layers: Sequence[int], prompt: str = "oracle", site: str | None = None
    ) -> dict[int, Float[Tensor, "n_items d_receiver"]]:
        return self.states("receiver", layers, prompt, self.position(site))

    def sender_logits(self) -> Float[Tensor, "n_items d_vocab"]:
        """The sender's next-token logits restricted to nothing: full vocabulary, last position."""

        def compute() -> Tensor:
            return capture_resid_post(
                self.pair.sender,
                self.sender_items.sender_tokens,
                layers=[0],
                positions=[-1],
                with_answer_logits=True,
                batch_size=self.config.batch_size,
            ).answer_logits.float()

        return self.store.tensor(self._key("sender", "sender"), "answer_logits", compute)

    def greedy_b(self) -> Int[Tensor, " n_items"]:
        """The sender's greedy next token, as a receiver token: the text relay writes it into the slot."""
        greedy = self.sender_logits().argmax(-1)
        if self.pair.sender_language is self.pair.language:
            return greedy
        return relay_tokens(greedy, self.pair.sender_language, self.pair.language)

    def bridge_data(
        self, sender_layer: int, receiver_layer: int, target: str | None = None, site: str | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_fit, y_fit, x_test, y_test) for a bridge fitted to ``target`` at ``site``."""
        target = target or self.config.options.target
        x = self.sender_states([sender_layer])[sender_layer]
        if target == "relay-slot":
            y = self.receiver_states([receiver_layer], "oracle", site)[receiver_layer]
            return x[self.fit_idx], y[self.fit_idx], x[self.test_idx], y[self.test_idx]
        # same-input: both models read the same texts; states paired by token
        reads = [("sender", -1), ("oracle", self.items.slot_position), ("oracle", self.items.final_position)]
        xs = [self.states("sender", [sender_layer], prompt, p)[sender_layer] for prompt, p in reads]
        ys = [self.states("receiver", [receiver_layer], prompt, p)[receiver_layer] for prompt, p in reads]
        stack = lambda parts, idx: torch.cat([part[idx] for part in parts])
        return (
            stack(xs, self.fit_idx),
            stack(ys, self.fit_idx),
            stack(xs, self.test_idx),
            stack(ys, self.test_idx),
        )

    def fit_bridge(
        self, sender_layer: int, receiver_layer: int, target: str | None = None, site: str | None = None
    ) -> LinearBridge:
        x_fit, y_fit, _, _ = self.bridge_data(sender_layer, receiver_layer, target, site)
        check_finite(x_fit, y_fit, what="captured activations")
        metadata = {
            "sender": self.pair.sender_name,
            "receiver": self.pair.receiver_name,
            "sender_hook": resid_post_name(sender_layer),
            "receiver_hook": resid_post_name(receiver_layer),
            "target": target or self.config.options.target,
            "position": site or self.config.options.position,
            "seed": self.seed,
        }
        return LinearBridge.fit(x_fit, y_fit, seed=self.seed, metadata=metadata)

    def translated(self, bridge: LinearBridge, sender_layer: int) -> Float[Tensor, "n_test d_receiver"]:
        """The bridge's outputs for the held-out items' sender states."""
        vectors = bridge(self.sender_states([sender_layer])[sender_layer][self.test_idx])
        check_finite(vectors, what="bridge outputs")
        return vectors

    def test_prompts(self) -> dict[str, Int[Tensor, "n_test pos"]]:
        test = self.test
        return {
            "placeholder": test.placeholder_tokens,
            "relay": test.with_slot(self.greedy_b()[self.test_idx]),
            "oracle": test.oracle_tokens,
        }


def check_finite(*tensors: Tensor, what: str) -> None:
    if not all(torch.isfinite(t).all() for t in tensors):
        raise UserError(f"NaN or infinite values in {what}; the result would be meaningless, stopping")


def seed_contexts(config: ExperimentConfig, pair: ModelPair, store: ActivationStore) -> list[SeedContext]:
    return [SeedContext(config, pair, seed, store) for seed in config.seed_indices]
