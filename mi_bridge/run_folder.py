"""Run folders that never clobber and always repeat: the resolved config a folder records, and default
folder names that carry a hash of it, so that two runs of different settings never share a folder.

Pure functions of the config (the layers resolved by the caller), except ``check_new``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from mi_bridge import cli
from mi_bridge.config import ExperimentConfig, current_record
from mi_bridge.errors import UserError
from mi_bridge.files import refuse_existing
from mi_bridge.models.sources import source_for

NOT_HASHED = ("out", "extra")
"""Config fields that do not change what a run computes: where it is written, and the notes (identities,
device) that a run adds itself."""
HASH_LENGTH = 8


def resolved(config: ExperimentConfig, sender_layer: int, receiver_layer: int) -> ExperimentConfig:
    """``config`` with every default made explicit: model names, layers, revisions of hub models
    (``main``), and the protocol's options (``resolved``); the template is resolved by the config itself. Its config.json then
    repeats the run even after a default changes."""

    def revision(name: str, asked: str | None) -> str | None:
        takes_one = config.family.pretrained and source_for(name).takes_revision
        return asked or ("main" if takes_one else None)

    return replace(
        config,
        sender=config.sender_name,
        receiver=config.receiver_name,
        sender_layer=sender_layer,
        receiver_layer=receiver_layer,
        sender_revision=revision(config.sender_name, config.sender_revision),
        receiver_revision=revision(config.receiver_name, config.receiver_revision),
        options=config.options.resolved(),
    )


def short_hash(data: dict) -> str:
    """The first hex digits of the SHA-256 of ``data`` as canonical JSON."""
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:HASH_LENGTH]


def comparable(config: ExperimentConfig) -> dict:
    """What a run computes from: every config field but ``NOT_HASHED``."""
    return {k: v for k, v in config.to_dict().items() if k not in NOT_HASHED}


def config_hash(config: ExperimentConfig, **more) -> str:
    """A short hash of what a run computes: its ``comparable`` fields, and ``more`` (an analysis's own
    options, the analyses run). Hash a ``resolved`` config, so that a default and its explicit value give
    one name."""
    return short_hash(comparable(config) | more)


def same_run(recorded: dict, config: ExperimentConfig) -> bool:
    """Whether a run folder's config.json records a run of ``config``: both with their defaults made
    explicit, a layer left to its default (``None``) taking the other side's value."""
    try:
        before = ExperimentConfig.from_dict(current_record(recorded)[0])
    except UserError:
        return False

    def explicit(side: ExperimentConfig, other: ExperimentConfig) -> ExperimentConfig:
        layer = lambda role: getattr(side, role) if getattr(side, role) is not None else getattr(other, role)
        return resolved(side, layer("sender_layer"), layer("receiver_layer"))

    return comparable(explicit(before, config)) == comparable(explicit(config, before))


def default_name(config: ExperimentConfig, tag: str, **more) -> str:
    """``<pair>-<sender>-<receiver>-L<ls>-L<lr>-<tag>-<hash>`` for a ``resolved`` config."""
    name = (
        f"{config.pair}-{config.sender_name}-{config.receiver_name}-"
        f"L{config.sender_layer}-L{config.receiver_layer}-{tag}-{config_hash(config, **more)}"
    )
    return name.replace("/", "_")


def check_new(folder: Path, overwrite: bool) -> None:
    """Before any work: the folder can be written, and holds nothing unless ``overwrite`` says to
    replace it (one clear line otherwise)."""
    cli.check_writable(folder)
    if not overwrite:
        refuse_existing(folder)
