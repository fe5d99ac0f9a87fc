"""The KV-cache channel on the split protocol's items (issue 34): what one seed computes.

The sender reads its hop-1 prompt P; the receiver reads its own prompt Q, which lacks B. The channel
delivers keys and values derived from the sender's cache of P to the receiver as a prefix of P's length
(``runtime.kv_entries``), which every receiver layer's attention reads before Q. Prepended positions,
not fusion into Q's positions: P and Q are different texts, so a position-by-position fusion (C2C's) is
undefined here.

Per seed, on the same items and split as the residual bridges:

- ``kv-linear``: per receiver layer a ridge map of keys and one of values (``bridges.kv``) from the
  sender layer the layer map names, fitted on both models' caches of the fit items' P (no labels).
- ``kv-fuser``: that map plus a trained low-rank correction and a gate per layer (``bridges.kv_fuser``),
  trained through the frozen receiver on the answer's cross-entropy, early-stopped on held-out fit items.
  It reads only the sender's cache. ``kv-fuser untrained`` is the same fuser before training.
- Controls of the sender's input, each through the same map or the same trained fuser: ``shuffled``
  (another held-out item's cache), ``mean`` (the mean of the fit items' caches) and ``random`` (random
  entries with the sender's norm per position, layer and head).
- ``learned prefix``: as many delivered positions and about as many trained numbers as the fuser, trained
  the same way, with no sender input: what the receiver gains by adaptation alone (C2C's "receiver
  alone" question).
- ``receiver reads P``: the receiver's own cache of P delivered the same way, i.e. the receiver reading
  P + Q, and ``receiver reads P + B``: the same with the sender's greedy hop-1 answer B (the text relay's
  B) after P. They carry nothing the channel could not (P, and what the sender computes from P), so they
  are its ceilings. For a model paired with itself under the identity layer map the first *is* the
  sender's cache, by construction, and says nothing about a channel.

Every condition's answer logits are scored like the residual conditions (``core.evaluate.score``), and the
attention mass the receiver's last position puts on the delivered positions is recorded per layer.

Sites. A cache is read by every layer, so a residual site does not restrict it by itself. Per site of the
run (receiver layer L), the same fitted and trained sources are also read only by the layers after L
(the others' gates closed, ``band_gates``): the layers a residual injection at L reaches, so that the KV
channel stands beside the residual bridge at that site on the same footing. The sources are trained once,
on the full cache; a band is their ablation, not a source trained for the band.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_bridge.bridges.kv import KVLinearBridge, LayerMap, paired_caches
from mi_bridge.bridges.kv_fuser import KVFuser, KVSource, LearnedPrefix
from mi_bridge.bridges.kv_options import KVOptions
from mi_bridge.bridges.kv_training import KVItems, train_kv_source
from mi_bridge.core.controls import derangement, random_like
from mi_bridge.core.evaluate import ItemScores, score
from mi_bridge.core.progress import track
from mi_bridge.errors import UserError
from mi_bridge.protocols.split.prepare import SeedContext
from mi_bridge.runtime.kv_cache import run_tokens
from mi_bridge.runtime.kv_entries import KV, capture_kv, delivered_cache, gate_hooks
from mi_bridge.seeds import SeedOffset

READS_P, READS_PB = "receiver reads P", "receiver reads P + B"
CEILINGS = (READS_P, READS_PB)
LINEAR, FUSER, UNTRAINED, PREFIX = "kv-linear", "kv-fuser", "kv-fuser untrained", "learned prefix"
CONTROLS = ("shuffled", "mean", "random")
SENDER_READING = (LINEAR, FUSER)
"""The conditions that carry the sender's cache: the family the verdict reads (Holm over it)."""
KV_CONDITIONS = (
    *CEILINGS,
    LINEAR,
    *(f"{LINEAR} {c}" for c in CONTROLS),
    UNTRAINED,
    FUSER,
    *(f"{FUSER} {c}" for c in CONTROLS),
    PREFIX,
)
"""Every delivered-cache condition, in report order."""
PLAIN_PROMPTS = {"baseline": "placeholder", "text relay": "relay", "oracle": "oracle"}


HELDOUT_FRACTION = 0.2
"""Share of the fit items held out of training, to stop it early (the trained sources never see the
evaluation items)."""


FULL_DEPTH = "every layer"
"""The band of the full cache: every receiver layer reads the delivered positions (what is trained)."""


def after_site(layer: int) -> str:
    """The band of a site at receiver layer ``layer``: only the layers after it read the delivered
    positions, the layers a residual injection at that site reaches (``resid_post`` of ``layer``)."""
    return f"after L{layer}"


def band_gates(n_layers: int, after: int | None) -> Float[Tensor, " n_layers"]:
    """Log gates that close every layer up to ``after`` (None: all open)."""
    gates = torch.zeros(n_layers)
    if after is not None:
        gates[: after + 1] = -torch.inf
    return gates


@dataclass
class SeedKV:
    """One seed's KV channel: per-item scores and attention mass per condition, and how it was fitted."""

    scores: dict[str, ItemScores]
    """The plain prompts and every delivered cache read by every receiver layer (``FULL_DEPTH``)."""
    attention_mass: dict[str, list[float]]
    """Mean attention of the receiver's last position on the delivered positions, per layer."""
    fit: dict
    """The layer map, the ridge map's fit quality of keys and values (``ridge``: on the fit items it was
    fitted on; ``ridge_heldout``: on the held-out items) and each trained source's training log."""
    cpu_seconds: float
    wall_seconds: float
    sites: dict[int, dict[str, ItemScores]] = field(default_factory=dict)
    """Per site (receiver layer), every delivered cache read only by the layers after it (``after_site``)."""
    sources: dict[str, object] = field(default_factory=dict)
    """The fitted map and the trained fuser and prefix, by condition name (saved with a run)."""


def run_seed_kv(seed: SeedContext, options: KVOptions, batch_size: int, sites: Sequence[int] = ()) -> SeedKV:
    """The KV channel's conditions on one seed's held-out items (module docstring), read by every receiver
    layer and, per receiver layer in ``sites``, by the layers after it only (the same trained sources)."""
    if seed.pair.sender_language is not seed.pair.language:
        raise UserError(
            "the KV channel needs one tokenizer: the sender's cache of P is mapped onto the receiver's cache "
            "of the same tokens (two tokenizers would need C2C's token alignment, which is not built)"
        )
    cpu, wall = time.process_time(), time.perf_counter()
    sender, receiver = seed.pair.sender, seed.pair.receiver
    items = seed_items(seed)
    fit, test = items.rows(seed.fit_idx), items.rows(seed.test_idx)
    layer_map = LayerMap.parse(options.layer_map)
    sender_fit, receiver_fit = paired_caches(sender, receiver, fit.sender_tokens)
    bridge = KVLinearBridge.fit(sender_fit, receiver_fit, layer_map=layer_map, seed=seed.seed)
    generator = torch.Generator().manual_seed(SeedOffset.KV_CHANNEL + seed.seed)
    order = torch.randperm(len(fit), generator=generator)
    n_held = max(1, round(len(fit) * HELDOUT_FRACTION))
    train, held = fit.rows(order[n_held:]), fit.rows(order[:n_held])
    fuser = KVFuser.from_bridge(bridge, rank=options.rank, seed=seed.seed)
    untrained = copy.deepcopy(fuser)
    prefix = LearnedPrefix.matched_to(fuser, bridge, fit.sender_tokens.shape[1], seed=seed.seed)
    logs = {}
    for name, source, reads in ((FUSER, fuser, sender), (PREFIX, prefix, None)):
        log = train_kv_source(
            source,
            receiver,
            train,
            held,
            sender=reads,
            options=options,
            seed=seed.seed,
            description=f"seed {seed.seed}: training the {name} (epochs, early-stopped)",
        )
        logs[name] = asdict(log) | {"n_trainable": source.n_trainable()}

    with torch.no_grad():
        sender_test, receiver_test = paired_caches(sender, receiver, test.sender_tokens)
        mean = [tuple(t.mean(0, keepdim=True) for t in pair) for pair in sender_fit]
        inputs = {
            "": sender_test,
            "shuffled": _rows(sender_test, derangement(len(test), generator)),
            "mean": [tuple(t.expand(len(test), *t.shape[1:]) for t in pair) for pair in mean],
            "random": [tuple(random_like(t.cpu(), generator).to(t) for t in pair) for pair in sender_test],
        }
        with_b = torch.cat([test.sender_tokens, seed.greedy_b()[seed.test_idx, None]], dim=1)
        deliveries: dict[str, Callable[[Tensor], tuple[list[KV], Tensor | None]]] = {
            READS_P: lambda rows: (_rows(receiver_test, rows), None),
            READS_PB: lambda rows: (capture_kv(receiver, with_b[rows]), None),
        }
        for control, entries in inputs.items():
            suffix = f" {control}" if control else ""
            deliveries[LINEAR + suffix] = _mapped(bridge, entries)
            if not control:
                deliveries[UNTRAINED] = _sourced(untrained, entries)
            deliveries[FUSER + suffix] = _sourced(fuser, entries)
        deliveries[PREFIX] = _sourced(prefix, None)
        scores, mass = evaluate_kv(seed, test, deliveries, batch_size)
        by_site = {
            layer: evaluate_kv(seed, test, deliveries, batch_size, after=layer, plain=False)[0]
            for layer in sites
        }
    fit_report = {
        "seed": seed.seed,
        "layer_map": str(layer_map),
        "sender_layers": list(bridge.sender_layers),
        "ridge": bridge.score(sender_fit, receiver_fit),
        "ridge_heldout": bridge.score(sender_test, receiver_test),
        "training": logs,
    }
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    sources = {LINEAR: bridge, FUSER: fuser, PREFIX: prefix}
    return SeedKV(scores, mass, fit_report, cpu, wall, by_site, sources)


def seed_items(seed: SeedContext) -> KVItems:
    """Every item of the seed as the channel reads it: the sender's P, the receiver's Q and the answer."""
    p, q = seed.sender_items.sender_tokens, seed.items.placeholder_tokens
    return KVItems(p, torch.ones_like(p), q, torch.ones_like(q), seed.items.answer_ids)


def evaluate_kv(
    seed: SeedContext,
    test: KVItems,
    deliveries: dict[str, Callable[[Tensor], tuple[list[KV], Tensor | None]]],
    batch_size: int,
    after: int | None = None,
    plain: bool = True,
) -> tuple[dict[str, ItemScores], dict[str, list[float]]]:
    """Per-item scores of the plain prompts (baseline, text relay, oracle; with ``plain``) and of every
    delivered cache, with the attention mass on the delivered positions; ``after``: only the receiver
    layers after it read the delivered positions (the others' gates closed, ``band_gates``)."""
    receiver, held_out = seed.pair.receiver, seed.test
    prompts = seed.test_prompts()
    n, scores, mass = len(test), {}, {}
    batches = [torch.arange(n)[i : i + batch_size] for i in range(0, n, batch_size)]
    score_of = lambda logits: score(logits, held_out.answer_candidates, held_out.gold_index)
    for name, prompt in PLAIN_PROMPTS.items() if plain else ():
        tokens = prompts[prompt]
        scores[name] = score_of(torch.cat([receiver(tokens[rows])[:, -1] for rows in batches]))
    band = None if after is None else band_gates(receiver.cfg.n_layers, after)
    where = "" if after is None else f", read {after_site(after)}"
    described = f"seed {seed.seed}: KV conditions{where}"
    for name, delivery in track(deliveries.items(), described, len(deliveries)):
        logits, layer_mass = [], []
        for rows in batches:
            entries, log_gates = delivery(rows)
            if band is not None:
                log_gates = band if log_gates is None else log_gates + band.to(log_gates)
            out, attended = _delivered_logits(receiver, entries, log_gates, test.receiver_tokens[rows])
            logits.append(out)
            layer_mass.append(attended * len(rows))
        scores[name] = score_of(torch.cat(logits))
        mass[name] = (torch.stack(layer_mass).sum(0) / n).tolist()
    return scores, mass


def _delivered_logits(
    receiver, entries: list[KV], log_gates: Tensor | None, tokens: Int[Tensor, "batch q"]
) -> tuple[Float[Tensor, "batch d_vocab"], Float[Tensor, " n_layers"]]:
    """The receiver's last-position logits on ``tokens`` after the delivered cache (gated where the
    source has gates), and its mean attention on the delivered positions per layer."""
    cache = delivered_cache(receiver, entries)
    n_layers, attended = receiver.cfg.n_layers, {}

    def record(layer: int):
        def hook(pattern: Float[Tensor, "batch head q k"], hook) -> None:
            attended[layer] = pattern[:, :, -1, : cache.length].sum(-1).mean().double()

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_pattern", record(layer)) for layer in range(n_layers)]
    if log_gates is not None:
        hooks += gate_hooks(log_gates, cache.length)
    with receiver.hooks(fwd_hooks=hooks):
        logits = run_tokens(receiver, tokens, cache)[:, -1]
    return logits, torch.stack([attended[layer].cpu() for layer in range(n_layers)])


def _mapped(bridge: KVLinearBridge, sender: list[KV]):
    return lambda rows: (bridge(_rows(sender, rows)), None)


def _sourced(source: KVSource, sender: list[KV] | None):
    def deliver(rows: Tensor) -> tuple[list[KV], Tensor]:
        entries, _ = source(None if sender is None else _rows(sender, rows), None, len(rows))
        return entries, source.log_gates()

    return deliver


def _rows(entries: list[KV], rows: Tensor) -> list[KV]:
    return [(keys[rows], values[rows]) for keys, values in entries]
