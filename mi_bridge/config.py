"""The experiment's configuration: one dataclass, validated without I/O, round-tripped through JSON."""

from __future__ import annotations

import importlib
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import torch

from mi_bridge.errors import UserError
from mi_bridge.families import PAIRS, TEMPLATES, family

POSITIONS = ("slot", "final")
TARGETS = ("relay-slot", "same-input")
DTYPES = ("float32", "bfloat16", "float16")
BRIDGES = ("ridge", "sgd-l2", "both")
CONDITION_FAMILIES = ("translated", "controls", "ceilings")
"""Families of injected conditions that ``--conditions`` picks: the bridge's output, the controls (random,
shuffled, mean) and the receiver's own states (self-patch and the context-free ceilings); their vector kinds
are in ``core/conditions.py``."""
INJECTION_MODES = ("add", "replace", "rescale", "rescale-add")
"""The injection modes (``core/inject.py``), which ``--conditions`` may also name."""
PROTOCOLS: dict[str, str] = {
    "split": "mi_bridge.protocols.split",
    "seed": "mi_bridge.protocols.seed",
}
"""The one registry of protocols: each name's package. Its ``rules.RULES`` (a ``ProtocolRules``, light:
no torch) checks a config and gives the protocol's defaults; its ``Protocol`` runs it. Both are imported
by name only when asked for, so bad input is refused before torch and TransformerLens load. A new protocol
is its package and one ``register_protocol`` call; nothing here branches on a protocol's name."""


CHOICES = {
    "pair": PAIRS,
    "position": POSITIONS,
    "target": TARGETS,
    "dtype": DTYPES,
    "protocol": PROTOCOLS,
    "bridge": BRIDGES,
    "template": TEMPLATES,
}
"""The allowed values of the config fields that take one of a few names (used by the CLI)."""
FIELD_GROUPS = {
    group: tuple(names.split())
    for group, names in {
        "models": "pair sender receiver sender_revision receiver_revision sender_layer receiver_layer",
        "task and sample": "protocol template k n_items n_fit seeds seed test_fraction",
        "split protocol": "position target alphas conditions site_scan second_site min_oracle_gap",
        "seed protocol": "bridge fit_corpus max_new_tokens",
        "statistics": "n_bootstrap",
        "running": "device dtype n_devices batch_size out extra",
    }.items()
}
"""The config's fields by concern, each protocol's own apart: ``--help`` shows them in these groups, while
``config.json`` stays flat (one key per field), so every earlier run folder still loads with ``--config``."""


def register_protocol(name: str, package: str) -> None:
    """Make the protocol in ``package`` (with ``rules.py``) runnable as ``--protocol name``."""
    PROTOCOLS[name] = package


class ProtocolRules:
    """What a protocol decides about a config: its own checks and defaults."""

    protocol: ClassVar[str]
    """The ``Protocol`` class that runs it, as ``module:class``."""
    default_bridge: ClassVar[str] = "ridge"
    """The bridge kind a run gets without ``--bridge``."""
    layer_depth: ClassVar[float | None] = None
    """The default layers' relative depth (None: ``models.default_layer``'s rule)."""

    def validate(self, config: ExperimentConfig) -> None:
        """Raise ``UserError`` for what this protocol cannot run (called after the shared checks)."""

    def one_tokenizer_reason(self, config: ExperimentConfig) -> str | None:
        """Why this run needs sender and receiver to share one tokenizer (None: it does not)."""
        return None


def protocol_rules(name: str) -> ProtocolRules:
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return importlib.import_module(f"{PROTOCOLS[name]}.rules").RULES


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


AUTO_DEVICE = "auto"
"""``--device auto``: CUDA when available, else the CPU (resolved by ``core.device``, never here)."""
FLOAT16_ON_CPU = "dtype float16 is not supported on the CPU; use bfloat16 there, or a GPU device"


@dataclass
class ExperimentConfig:
    """Everything that determines one run of the transfer experiment."""

    pair: str = "toy"
    """Model pair family: ``toy`` (embedded), ``pythia`` (TransformerLens names), ``smollm2`` (fetch it
    first: python -m mi_bridge.models fetch smollm2-135m) or ``hf`` (any causal LM by hub name or folder,
    both named)."""
    sender: str | None = None
    """Sender model name; default from the pair (``pythia-160m`` for pythia)."""
    receiver: str | None = None
    """Receiver model name; default from the pair (``pythia-410m`` for pythia)."""
    sender_layer: int | None = None
    """Sender layer whose ``resid_post`` at the final position is translated; default: the middle layer
    (toy pair: the sender's last layer, where it resolves hop 1)."""
    receiver_layer: int | None = None
    """Receiver layer whose ``resid_post`` is injected into; default: the middle layer."""
    position: str = "slot"
    """Injection site: ``slot`` (the bridge entity's slot) or ``final`` (the last token, as in AC)."""
    target: str = "relay-slot"
    """Bridge target: the receiver's oracle-run state at the site, or states on the same input."""
    alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    """Strengths of the additive injections (h + alpha * v), low first."""
    template: str | None = None
    """Prompt form of a pretrained pair: ``list`` (``List: Tom Paris. Ann Rome. Tom`` -> `` Paris``: the
    query ends in the key) or ``lives-in`` (``Tom lives in Paris. ... Tom lives in``); default ``list``,
    the form a real small model can do (``python -m mi_bridge.calibrate`` measures both)."""
    k: int = 4
    """Facts per hop in context (chance is 1/k)."""
    n_items: int = 1000
    """Items sampled per seed; split into bridge-fit and evaluation halves."""
    n_fit: int | None = None
    """Bridge-fit items per seed, drawn apart from the held-out items (which stay those of ``n_items``,
    so runs with different ``n_fit`` are paired); default: the part of ``n_items`` not held out."""
    seeds: int = 3
    """Number of seeds; each draws fresh items and a fresh train/test split."""
    test_fraction: float = 0.5
    """Share of each seed's items held out for evaluation (the bridge never sees them)."""
    batch_size: int = 64
    """Items per forward pass."""
    n_bootstrap: int = 2000
    """Bootstrap resamples for the 95% confidence intervals."""
    site_scan: bool = True
    """Diagnose every receiver layer (self-patch, context-free ceiling, follow rate), so that the verdict
    can name the layers where a sender-derived vector could help."""
    second_site: bool = True
    """When the receiver layer is not pre-lookup and the site scan found a pre-lookup layer, also evaluate
    the translated conditions and controls at the pre-lookup layer nearest it (ties: the larger
    context-free ceiling), reported side by side with the requested site."""
    min_oracle_gap: float = 0.25
    """Task validity: oracle accuracy must exceed baseline accuracy by this much (CI excluding 0)."""
    sender_revision: str | None = None
    """Hugging Face revision of the sender: a branch, tag or commit, e.g. ``step143000`` for a Pythia
    training checkpoint; default ``main``. Pretrained models only."""
    receiver_revision: str | None = None
    """Hugging Face revision of the receiver (as ``sender_revision``; default ``main``)."""
    dtype: str = "float32"
    """Precision the models run in: ``float32``, ``bfloat16`` or ``float16`` (not on the CPU); the bridge
    fit and the statistics stay in float32/float64."""
    n_devices: int = 1
    """GPUs each pretrained model is split across, in consecutive blocks of layers (TransformerLens'
    ``n_devices``; under TransformerLens 4 the bridge's), for models that do not fit one GPU; the run
    records the placement. Needs that many CUDA GPUs."""
    protocol: str = "split"
    """``split`` (the sender holds what the receiver lacks) or ``seed`` (the reference paper's protocol as
    released; needs a pair with a shared tokenizer, e.g. ``--pair pythia``; docs/seed_protocol.md)."""
    bridge: str | None = None
    """Bridge recipe: ``ridge`` (closed form, standardized space), ``sgd-l2`` (the paper's: a linear layer
    with bias on L2-normalized states, AdamW) or ``both`` (compared on the same data); seed protocol only;
    default: ``sgd-l2`` under ``seed``, ``ridge`` under ``split``."""
    fit_corpus: str | None = None
    """Seed protocol: the bridge's fit text, a local file (one text per line) or a Hugging Face dataset
    ``name[:config]`` (needs ``datasets``); default: the eval contexts (offline)."""
    max_new_tokens: int = 64
    """Seed protocol: greedy tokens per answer (the text relay's sender gets twice as many)."""
    device: str = "auto"
    """Torch device the models run on: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``,
    ``cuda:1``, ... (docs/DESIGN.md, "Devices"); the run records the device used and the GPU's name."""
    seed: int = 0
    """Base seed: seed i of a run draws with seed + i (items, train/test split, controls, bridge fit), so
    runs with another base seed are independent replications; 0 is the historical numbering."""
    conditions: str = "all"
    """Split protocol: the injected conditions to evaluate, families (translated, controls, ceilings)
    and/or modes (add, replace, rescale, rescale-add), e.g. ``translated,controls,rescale``; translated
    is required, and baseline, relay, oracle and the site diagnosis's conditions are always kept."""
    out: str | None = None
    """Run folder; default ``runs/<pair>-<sender>-<receiver>-L<ls>-L<lr>-<position>-<target>-<hash>``, the
    hash that of the resolved config (``mi_bridge.run_folder``): runs of different settings never share one."""
    extra: dict = field(default_factory=dict)
    """Free-form notes carried into the run folder's config (not used by the experiment)."""

    def __post_init__(self) -> None:
        for name, value in _typed({f.name: getattr(self, f.name) for f in fields(self)}).items():
            setattr(self, name, value)
        for name in ("sender", "receiver"):
            if getattr(self, name) == "":
                raise UserError(f"{name} model name must not be empty")
        if self.pair not in PAIRS:
            raise UserError(f"unknown pair {self.pair!r}; choose one of {', '.join(PAIRS)}")
        if None in self.family.models and (self.sender is None or self.receiver is None):
            raise UserError(
                f"--pair {self.pair} needs --sender and --receiver: each a Hugging Face model name or a "
                "local folder"
            )
        if self.position not in POSITIONS:
            raise UserError(f"unknown position {self.position!r}; choose one of {', '.join(POSITIONS)}")
        if self.target not in TARGETS:
            raise UserError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if not self.alphas or not all(math.isfinite(a) and a > 0 for a in self.alphas):
            raise UserError(f"alphas must be one or more finite positive numbers (got {self.alphas})")
        if self.k < 2:
            raise UserError(f"k must be at least 2 (got {self.k})")
        if self.seeds < 1:
            raise UserError(f"seeds must be at least 1 (got {self.seeds})")
        if not 0 < self.test_fraction < 1:
            raise UserError(f"test fraction must lie strictly between 0 and 1 (got {self.test_fraction})")
        if self.batch_size < 1 or self.n_bootstrap < 100:
            raise UserError("batch size must be >= 1 and bootstrap resamples >= 100")
        try:  # the spelling only: whether the device exists is checked when the models load, not here
            kind = None if self.device == AUTO_DEVICE else torch.device(self.device).type
        except (RuntimeError, ValueError):
            raise UserError(f"unknown device {self.device!r} (e.g. auto, cpu, cuda, cuda:1, mps)") from None
        if self.n_devices < 1:
            raise UserError(f"n_devices must be at least 1 (got {self.n_devices})")
        if self.n_devices > 1 and not self.family.pretrained:
            raise UserError(
                f"n_devices applies to pretrained models; the {self.pair} pair fits any one device"
            )
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.dtype == "float16" and kind == "cpu":  # under "auto": checked once the device resolves
            raise UserError(FLOAT16_ON_CPU)
        for name in ("sender_revision", "receiver_revision"):
            revision = getattr(self, name)
            if revision is None:
                continue
            if not self.family.pretrained:
                raise UserError(
                    f"{name.replace('_', ' ')} applies to pretrained models; the {self.pair} pair has none"
                )
            if not revision or any(c.isspace() for c in revision) or ".." in revision or revision[0] == "/":
                raise UserError(
                    f"{name.replace('_', ' ')} {revision!r} is not a revision name (e.g. step143000)"
                )
        allowed = self.family.templates
        if self.template is None:  # resolved here, so that config.json records the form that ran
            self.template = allowed[0]
        elif self.template not in allowed:
            raise UserError(
                f"unknown template {self.template!r} for pair {self.pair}; choose one of {', '.join(allowed)}"
            )
        rules = protocol_rules(self.protocol)
        if self.bridge is not None and self.bridge not in BRIDGES:
            raise UserError(f"unknown bridge {self.bridge!r}; choose one of {', '.join(BRIDGES)}")
        if self.max_new_tokens < 1:
            raise UserError(f"max new tokens must be at least 1 (got {self.max_new_tokens})")
        for name in ("sender_layer", "receiver_layer"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"{name.replace('_', ' ')} must be >= 0 (got {value})")
        if not 0 <= self.seed <= SeedOffset.SPLIT - self.seeds:  # each random stream stays distinct
            raise UserError(f"seed must lie in 0..{SeedOffset.SPLIT - self.seeds} (got {self.seed})")
        self.conditions = normalize_conditions(self.conditions)
        rules.validate(self)

    @property
    def family(self):
        """What the pair's family supports (``families.PairFamily``)."""
        return family(self.pair)

    @property
    def sender_name(self) -> str:
        return self.sender or self.family.models[0]

    @property
    def receiver_name(self) -> str:
        return self.receiver or self.family.models[1]

    @property
    def bridge_kind(self) -> str:
        """The bridge recipe, with the protocol's default."""
        return self.bridge or protocol_rules(self.protocol).default_bridge

    @property
    def one_tokenizer_reason(self) -> str | None:
        """Why this run needs sender and receiver to share one tokenizer (None: it does not)."""
        return protocol_rules(self.protocol).one_tokenizer_reason(self)

    @property
    def layer_depth(self) -> float | None:
        """The default layers' relative depth under the protocol (None: ``models.default_layer``'s rule)."""
        return protocol_rules(self.protocol).layer_depth

    @property
    def seed_indices(self) -> range:
        """The seeds a run draws with: ``seeds`` of them from the base ``seed``."""
        return range(self.seed, self.seed + self.seeds)

    @property
    def condition_families(self) -> tuple[str, ...]:
        return _conditions(self.conditions)[0]

    @property
    def condition_modes(self) -> tuple[str, ...]:
        return _conditions(self.conditions)[1]

    @property
    def n_test(self) -> int:
        return int(round(self.n_items * self.test_fraction))

    @property
    def fit_items(self) -> int:
        """Bridge-fit items per seed."""
        return self.n_items - self.n_test if self.n_fit is None else self.n_fit

    def to_dict(self) -> dict:
        data = asdict(self)
        data["alphas"] = list(self.alphas)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ExperimentConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**_typed(data))


def _conditions(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The families and modes a ``conditions`` text names (none of one kind: all of it)."""
    names = [name.strip() for name in text.split(",")]
    if names == ["all"]:
        return CONDITION_FAMILIES, INJECTION_MODES
    unknown = [n for n in names if n not in CONDITION_FAMILIES + INJECTION_MODES]
    if unknown:
        raise UserError(
            f"unknown condition family or mode {unknown[0]!r}; choose from all, "
            f"{', '.join(CONDITION_FAMILIES + INJECTION_MODES)}"
        )
    families = tuple(f for f in CONDITION_FAMILIES if f in names) or CONDITION_FAMILIES
    modes = tuple(m for m in INJECTION_MODES if m in names) or INJECTION_MODES
    if "translated" not in families:
        raise UserError("--conditions must include translated: the verdict reads the translated conditions")
    return families, modes


def normalize_conditions(text: str) -> str:
    """One spelling per selection (canonical order, ``all`` for everything), so that equal selections
    give equal configs and run folder names."""
    families, modes = _conditions(text)
    if (families, modes) == (CONDITION_FAMILIES, INJECTION_MODES):
        return "all"
    return ",".join(
        [
            *(f for f in families if families != CONDITION_FAMILIES),
            *(m for m in modes if modes != INJECTION_MODES),
        ]
    )


def _typed(values: dict) -> dict:
    """Field values with their types checked by hand (a config may come from a JSON file written by
    anyone): numbers coerced to float where a float is expected, alphas to a tuple; else a UserError."""
    hints = typing.get_type_hints(ExperimentConfig)
    out = dict(values)
    for name, value in values.items():
        if name == "alphas":
            ok = isinstance(value, tuple | list) and all(_is_number(a) for a in value)
            value = tuple(float(a) for a in value) if ok else value
        elif hints[name] is float:
            ok = _is_number(value)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, hints[name]) and not (isinstance(value, bool) and hints[name] is not bool)
        if not ok:
            raise UserError(f"config field {name!r} has the wrong type: {value!r}")
        out[name] = value
    return out


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
