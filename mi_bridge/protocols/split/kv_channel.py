"""The KV-cache channel on the split protocol's items (issues 34 and 43): what one seed computes.

The sender reads a text, and the channel delivers keys and values derived from its cache of that text to
the receiver as prepended positions (``runtime.kv_entries``), which every receiver layer's attention
reads before the receiver's own text. What the sender reads is ``--kv-source``:

- ``prompt``: its hop-1 prompt P; the receiver then reads its prompt with the placeholder. The receiver's
  own cache of P is the ceiling (it carries nothing the channel could not); P followed by the gold B is an
  upper reference, not a ceiling (it carries the hop-1 answer, which the sender may not compute). On this
  task the receiver cannot use P (it would have to solve hop 1 silently and resolve the placeholder), so
  no untrained map of P's cache can help; only a trained source could find another use for it.
- ``facts``: the receiver's hop-2 facts F, in the sender's own tokens, aligned to the receiver's tokens
  of F by text span (``models.alignment``); the receiver reads its query alone. The receiver's own cache
  of F followed by its query *is* the oracle prompt, so the ceiling is the oracle by construction (the
  run reports the largest logit difference), and under the identity map of a self-pair the channel must
  equal it (the run stops if not). Another item's F, read by the receiver, is the text control.

Per seed, on the same items and split as the residual bridges:

- ``kv-linear``: per receiver layer a ridge map of keys and one of values (``bridges.kv``) from the
  sender layer the layer map names, fitted on both models' caches of the fit items' text (no labels);
  for one model under the identity layer map, the identity itself (no fit).
- ``kv-fuser``: that map plus a trained low-rank correction and a gate per layer (``bridges.kv_fuser``),
  trained through the frozen receiver (``bridges.kv_training``: cross-entropy over the k candidates by
  default, the checkpoint of the best held-out k-way accuracy). It reads only the sender's cache.
  ``kv-fuser untrained`` is the same fuser before training.
- Controls of the sender's input, each through the same map or the same trained fuser: ``shuffled``
  (another held-out item's cache), ``mean`` (the mean of the fit items' caches) and ``random`` (random
  entries with the sender's norm per position, layer and head).
- ``learned prefix``: as many delivered positions and about as many trained numbers as the fuser, trained
  the same way, with no sender input: what the receiver gains by adaptation alone (C2C's "receiver
  alone" question).

Every condition's answer logits are scored like the residual conditions (``core.evaluate.score``), and the
attention mass the receiver's last position puts on the delivered positions (after the first, a BOS) is
recorded per layer.

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

from mi_bridge.bridges.kv import KVLinearBridge, LayerMap
from mi_bridge.bridges.kv_fuser import KVFuser, KVSource, LearnedPrefix
from mi_bridge.bridges.kv_options import KVOptions
from mi_bridge.bridges.kv_training import KVItems, sender_entries, train_kv_source
from mi_bridge.core.controls import derangement, random_like
from mi_bridge.core.evaluate import ItemScores, score
from mi_bridge.core.progress import track
from mi_bridge.errors import CheckFailed, UserError
from mi_bridge.models.alignment import alignment
from mi_bridge.protocols.split.prepare import SeedContext
from mi_bridge.runtime.kv_cache import run_tokens
from mi_bridge.runtime.kv_entries import KV, capture_kv, delivered_cache, gate_hooks
from mi_bridge.seeds import SeedOffset

READS_P, READS_GOLD_PB = "receiver reads P", "receiver reads P + gold B"
READS_F, READS_OTHER_F = "receiver reads F", "receiver reads another item's F"
LINEAR, FUSER, UNTRAINED, PREFIX = "kv-linear", "kv-fuser", "kv-fuser untrained", "learned prefix"
CONTROLS = ("shuffled", "mean", "random")
SENDER_READING = (LINEAR, FUSER)
"""The conditions that carry the sender's cache: the family the verdict reads (Holm over it)."""
CHANNEL_CONDITIONS = (
    LINEAR,
    *(f"{LINEAR} {c}" for c in CONTROLS),
    UNTRAINED,
    FUSER,
    *(f"{FUSER} {c}" for c in CONTROLS),
    PREFIX,
)
REFERENCES = {"prompt": (READS_P, READS_GOLD_PB), "facts": (READS_F, READS_OTHER_F)}
"""Per ``--kv-source``, the receiver's own caches delivered the same way: the ceiling first (it carries
nothing the channel could not), then the other reference (prompt: P and the gold B, an upper reference
that carries the hop-1 answer the sender may not compute; facts: another item's facts, a text control)."""
CEILING = {source: names[0] for source, names in REFERENCES.items()}
PLAIN_PROMPTS = {
    "prompt": {"baseline": "placeholder", "text relay": "relay", "oracle": "oracle"},
    "facts": {"baseline": "query", "oracle": "oracle"},
}
"""Per ``--kv-source``, the receiver's plain prompts (name: prompt). Under facts the baseline is the
query alone: what every gate closed leaves (tested), and the oracle is F followed by the query, the text
that the ceiling delivers as a cache."""
EXACT = 1e-4
"""Largest logit difference allowed between the identity map of a self-pair and the ceiling it must
equal (the positive control), and reported between the ceiling and the oracle prompt."""


def kv_conditions(source: str) -> tuple[str, ...]:
    """Every delivered-cache condition of a ``--kv-source``, in report order."""
    return (*REFERENCES[source], *CHANNEL_CONDITIONS)


HELDOUT_FRACTION = 0.2
"""Share of the fit items held out of training, to choose the checkpoint and stop early (the trained
sources never see the evaluation items)."""


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
    """Mean attention of the receiver's last position on the delivered positions after the first (the
    delivered BOS, an attention sink), per layer."""
    fit: dict
    """The layer map, the ridge map's fit quality of keys and values (``ridge``: on the fit items it was
    fitted on; ``ridge_heldout``: on the held-out items), each trained source's training log and, under
    facts, the largest logit differences of the exactness checks."""
    cpu_seconds: float
    wall_seconds: float
    sites: dict[int, dict[str, ItemScores]] = field(default_factory=dict)
    """Per site (receiver layer), every delivered cache read only by the layers after it (``after_site``)."""
    sources: dict[str, object] = field(default_factory=dict)
    """The fitted map and the trained fuser and prefix, by condition name (saved with a run)."""
    source: str = "prompt"
    """What the sender read (``--kv-source``)."""


@dataclass
class ChannelTask:
    """One seed's items as the channel reads them under a ``--kv-source``: what the sender reads and the
    receiver after the delivered positions (``items``), the receiver's own tokens of the delivered text
    (``own``: its cache is the ceiling, and what the map is fitted to), the other reference's tokens, and
    the receiver's plain prompts."""

    source: str
    items: KVItems
    own: Int[Tensor, "n delivered"]
    other: Int[Tensor, "n other"]
    plain: dict[str, Int[Tensor, "n pos"]]


def channel_task(seed: SeedContext, source: str) -> ChannelTask:
    """Under ``prompt``: the sender reads its hop-1 prompt P, the receiver its prompt with the placeholder
    (one tokenizer). Under ``facts``: the sender reads the receiver's facts F in its own tokens, aligned to
    the receiver's tokens of F by text span (``models.alignment``), and the receiver reads its query alone."""
    items, candidates = seed.items, seed.items.answer_candidates
    if source == "prompt":
        if seed.pair.sender_language is not seed.pair.language:
            raise UserError(
                "--kv-source prompt needs one tokenizer: the sender's cache of P is mapped onto the "
                "receiver's cache of the same tokens (--kv-source facts aligns two tokenizers by text span)"
            )
        p, q = seed.sender_items.sender_tokens, items.placeholder_tokens
        kv_items = KVItems(p, torch.ones_like(p), q, torch.ones_like(q), items.answer_ids, candidates)
        gold_b = torch.cat([p, items.bridge_ids[:, None]], dim=1)
        plain = {"placeholder": items.placeholder_tokens, "oracle": items.oracle_tokens}
        plain["relay"] = items.with_slot(seed.greedy_b())
        return ChannelTask(source, kv_items, p, gold_b, plain)
    cut, sender_cut = items.query_start, seed.sender_items.query_start
    facts, query = items.oracle_tokens[:, :cut], items.oracle_tokens[:, cut:]
    sender_facts = seed.sender_items.oracle_tokens[:, :sender_cut]
    # Under one tokenizer too (the identity), so that the positive control runs the alignment's path.
    positions = alignment(facts, sender_facts, seed.pair.language, seed.pair.sender_language)
    ones = torch.ones_like
    kv_items = KVItems(
        sender_facts, ones(sender_facts), query, ones(query), items.answer_ids, candidates, positions
    )
    other = items.context_free_tokens[:, :cut]  # another item's facts, which do not mention this item's B
    return ChannelTask(source, kv_items, facts, other, {"query": query, "oracle": items.oracle_tokens})


def run_seed_kv(
    seed: SeedContext,
    options: KVOptions,
    batch_size: int,
    sites: Sequence[int] = (),
    same_model: bool = False,
) -> SeedKV:
    """The KV channel's conditions on one seed's held-out items (module docstring), read by every receiver
    layer and, per receiver layer in ``sites``, by the layers after it only (the same trained sources).
    ``same_model``: sender and receiver are one checkpoint; under the identity layer map the map is then
    the identity (no fit), and under facts the run checks that it equals the ceiling."""
    task = channel_task(seed, options.source)
    cpu, wall = time.process_time(), time.perf_counter()
    sender, receiver = seed.pair.sender, seed.pair.receiver
    fit, test = task.items.rows(seed.fit_idx), task.items.rows(seed.test_idx)
    own_fit, own_test = task.own[seed.fit_idx], task.own[seed.test_idx]
    layer_map = LayerMap.parse(options.layer_map)
    n_sender, n_receiver = sender.cfg.n_layers, receiver.cfg.n_layers
    self_reference = same_model and layer_map.sender_layers(n_sender, n_receiver) == tuple(range(n_receiver))
    with torch.no_grad():
        sender_fit, receiver_fit = sender_entries(sender, fit), capture_kv(receiver, own_fit)
    if self_reference:
        bridge = KVLinearBridge.identity(receiver_fit)
    else:
        bridge = KVLinearBridge.fit(sender_fit, receiver_fit, layer_map=layer_map, seed=seed.seed)
    generator = torch.Generator().manual_seed(SeedOffset.KV_CHANNEL + seed.seed)
    order = torch.randperm(len(fit), generator=generator)
    n_held = max(1, round(len(fit) * HELDOUT_FRACTION))
    train, held = fit.rows(order[n_held:]), fit.rows(order[:n_held])
    fuser = KVFuser.from_bridge(bridge, rank=options.rank, seed=seed.seed)
    untrained = copy.deepcopy(fuser)
    prefix = LearnedPrefix.matched_to(fuser, bridge, task.own.shape[1], seed=seed.seed)
    logs = {}
    for name, trained, reads in ((FUSER, fuser, sender), (PREFIX, prefix, None)):
        log = train_kv_source(
            trained,
            receiver,
            train,
            held,
            sender=reads,
            options=options,
            seed=seed.seed,
            description=f"seed {seed.seed}: training the {name} (epochs, early-stopped)",
        )
        logs[name] = asdict(log) | {"n_trainable": trained.n_trainable()}

    with torch.no_grad():
        sender_test, receiver_test = sender_entries(sender, test), capture_kv(receiver, own_test)
        mean = [tuple(t.mean(0, keepdim=True) for t in pair) for pair in sender_fit]
        inputs = {
            "": sender_test,
            "shuffled": _rows(sender_test, derangement(len(test), generator)),
            "mean": [tuple(t.expand(len(test), *t.shape[1:]) for t in pair) for pair in mean],
            "random": [tuple(random_like(t.cpu(), generator).to(t) for t in pair) for pair in sender_test],
        }
        ceiling, other = REFERENCES[task.source]
        other_tokens = task.other[seed.test_idx]
        deliveries: dict[str, Callable[[Tensor], tuple[list[KV], Tensor | None]]] = {
            ceiling: lambda rows: (_rows(receiver_test, rows), None),
            other: lambda rows: (capture_kv(receiver, other_tokens[rows]), None),
        }
        for control, entries in inputs.items():
            suffix = f" {control}" if control else ""
            deliveries[LINEAR + suffix] = _mapped(bridge, entries)
            if not control:
                deliveries[UNTRAINED] = _sourced(untrained, entries)
            deliveries[FUSER + suffix] = _sourced(fuser, entries)
        deliveries[PREFIX] = _sourced(prefix, None)
        plain = {
            name: task.plain[prompt][seed.test_idx] for name, prompt in PLAIN_PROMPTS[task.source].items()
        }
        compared = (("oracle", ceiling), (LINEAR, ceiling)) if task.source == "facts" else ()
        scores, mass, gaps = evaluate_kv(seed, test, deliveries, batch_size, plain=plain, compare=compared)
        by_site = {layer: evaluate_kv(seed, test, deliveries, batch_size, after=layer)[0] for layer in sites}
    fit_report = {
        "seed": seed.seed,
        "source": task.source,
        "layer_map": str(layer_map),
        "sender_layers": list(bridge.sender_layers),
        "map": "identity (one model, identity layer map: no fit)" if self_reference else "ridge",
        "ridge": bridge.score(sender_fit, receiver_fit),
        "ridge_heldout": bridge.score(sender_test, receiver_test),
        "n_delivered": int(task.own.shape[1]),
        "training": logs,
        "max_logit_difference": gaps,
    }
    if self_reference and task.source == "facts":
        check_positive_control(gaps[f"{LINEAR} vs {ceiling}"], seed.seed)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    sources = {LINEAR: bridge, FUSER: fuser, PREFIX: prefix}
    return SeedKV(scores, mass, fit_report, cpu, wall, by_site, sources, task.source)


def check_positive_control(gap: float, seed: int) -> None:
    """The identity map of a self-pair delivers the receiver's own cache of F: its logits must be the
    ceiling's. Anything else is a wrong alignment, capture or delivery, and every number of the run would
    be suspect, so the run stops."""
    if not gap <= EXACT:
        raise CheckFailed(
            f"positive control failed (seed {seed}): {LINEAR} under the identity map of a self-pair differs "
            f"from the receiver reading F by {gap:.3g} in the logits (allowed {EXACT:g}); the channel's "
            "capture, alignment or delivery is wrong"
        )


def evaluate_kv(
    seed: SeedContext,
    test: KVItems,
    deliveries: dict[str, Callable[[Tensor], tuple[list[KV], Tensor | None]]],
    batch_size: int,
    after: int | None = None,
    plain: dict[str, Int[Tensor, "n pos"]] | None = None,
    compare: Sequence[tuple[str, str]] = (),
) -> tuple[dict[str, ItemScores], dict[str, list[float]], dict[str, float]]:
    """Per-item scores of the ``plain`` prompts (name: tokens) and of every delivered cache, with the
    attention mass on the delivered positions (after the first); ``after``: only the receiver layers after
    it read the delivered positions (the others' gates closed, ``band_gates``). For each pair of names in
    ``compare``, the largest difference of their logits (``"a vs b"``)."""
    receiver, held_out = seed.pair.receiver, seed.test
    n, scores, mass, logits_of = len(test), {}, {}, {}
    keep = {name for pair in compare for name in pair}
    batches = [torch.arange(n)[i : i + batch_size] for i in range(0, n, batch_size)]
    score_of = lambda logits: score(logits, held_out.answer_candidates, held_out.gold_index)
    for name, tokens in (plain or {}).items():
        logits = torch.cat([receiver(tokens[rows])[:, -1] for rows in batches])
        scores[name] = score_of(logits)
        if name in keep:
            logits_of[name] = logits
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
        if name in keep:
            logits_of[name] = torch.cat(logits)
    gaps = {f"{a} vs {b}": float((logits_of[a] - logits_of[b]).abs().max()) for a, b in compare}
    return scores, mass, gaps


def _delivered_logits(
    receiver, entries: list[KV], log_gates: Tensor | None, tokens: Int[Tensor, "batch q"]
) -> tuple[Float[Tensor, "batch d_vocab"], Float[Tensor, " n_layers"]]:
    """The receiver's last-position logits on ``tokens`` after the delivered cache (gated where the
    source has gates), and its mean attention on the delivered positions per layer."""
    cache = delivered_cache(receiver, entries)
    n_layers, attended = receiver.cfg.n_layers, {}

    def record(layer: int):
        def hook(pattern: Float[Tensor, "batch head q k"], hook) -> None:
            # The first delivered position (a BOS, an attention sink) is left out: mass on it says nothing.
            attended[layer] = pattern[:, :, -1, 1 : cache.length].sum(-1).mean().double()

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
