"""The one runner layer under every entry point (``mi_bridge.run``, the analysis scripts,
``python -m mi_bridge.analyses``, ``mi_bridge.sweep``): flags generated from ``ExperimentConfig``, config
loading, the writability check, provenance, and publishing a run folder.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import platform
import subprocess
import tempfile
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields
from functools import cache
from importlib import metadata
from pathlib import Path

from mi_bridge.config import (
    FIELD_GROUPS,
    ExperimentConfig,
    all_options,
    choices_of,
    current_record,
    option_specs,
)
from mi_bridge.core.progress import error, one_line_errors, warn  # noqa: F401 (the commands' wrapper)
from mi_bridge.errors import UserError
from mi_bridge.families import FAMILIES
from mi_bridge.files import publish_folder, write_json

NOT_FLAGS = ("extra", "options")
"""Config fields that are not command-line flags: the free-form notes carried in config.json, and the
protocol's options (each of their fields is a flag of its own)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit code 2 (no usage dump)."""

    def error(self, message: str):
        raise UserError(message)


@cache
def field_docs(cls: type = ExperimentConfig) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal under it), read from the class source."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
        ):
            docs[node.target.id] = " ".join(following.value.value.split()).replace(
                "%", "%%"
            )  # argparse formats help with %
    return docs


def _comma_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(a) for a in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


def _flag_type(annotation) -> Callable[[str], object] | None:
    """The argparse type of a field annotation (``X | None`` takes X); None for booleans."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation is bool:
        return None
    if typing.get_origin(annotation) is tuple:
        return _comma_floats
    if annotation in (int, float, str):
        return annotation
    raise TypeError(f"no command-line form for a config field of type {annotation}")


def _default_text(value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return str(value)


def add_config_flags(
    parser: argparse.ArgumentParser,
    lists: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    helps: dict[str, str] | None = None,
) -> None:
    """One flag per shared ExperimentConfig field and per option of each registered protocol (or per
    field named in ``only``), its help the field's docstring and its default (or ``helps[field]``, where
    a command reads the field its own way, e.g. ``out``); the fields named in ``lists`` take their value
    as text (a sweep's list or range, parsed by ``mi_bridge.grid``). Each protocol's options are a group
    of their own: a protocol registered later brings its flags with it."""
    groups = {name: group for group, names in FIELD_GROUPS.items() for name in names}
    specs = [(spec.name, ExperimentConfig, spec, groups.get(spec.name)) for spec in fields(ExperimentConfig)]
    for protocol, options in all_options().items():
        specs += [
            (name, owner, spec, f"{protocol} protocol") for name, owner, spec, _ in option_specs(options)
        ]
    sections: dict[str, argparse._ArgumentGroup] = {}
    for name, owner, spec, group in specs:
        if name in NOT_FLAGS or (only is not None and name not in only):
            continue
        if group not in sections:
            sections[group] = parser.add_argument_group(group)
        section = sections[group]
        default = spec.default if spec.default is not MISSING else spec.default_factory()
        help_text = (helps or {}).get(name) or field_docs(owner).get(spec.name, "")
        if default is not None:
            help_text += f" (default: {_default_text(default)})"
        flag = "--" + name.replace("_", "-")
        kind = _flag_type(typing.get_type_hints(owner)[spec.name])
        if name in lists:
            section.add_argument(flag, type=str, help=f"{help_text} {sweep_note(name, kind)}")
        elif kind is None:
            section.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            section.add_argument(flag, type=kind, choices=choices_of(name), help=help_text)


def sweep_note(name: str, kind) -> str:
    """How a sweep takes a list of a field's values: layers also as ranges, names only as lists (they
    may hold dashes), a field of a few names with those names."""
    if kind is int:
        return "Sweep: a list or range, e.g. 0-11 or 0,4,8."
    if choices_of(name) is not None:
        return f"Sweep: a comma-separated list of {', '.join(choices_of(name))}."
    return "Sweep: a comma-separated list of names (no ranges: names may hold dashes)."


def build_parser(
    prog: str,
    description: str,
    epilog: str | None = None,
    helps: dict[str, str] | None = None,
    **parser_options,
) -> OneLineParser:
    """Every config field as a flag, plus ``--config``, ``--no-cache``, ``--full`` and ``--overwrite``;
    ``epilog`` (examples) is shown as written, after the flags; ``helps`` as in ``add_config_flags``."""
    parser = OneLineParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **parser_options,
    )
    parser.add_argument(
        "--config", type=Path, help="repeat a run from its config.json (other flags override it)"
    )
    add_config_flags(parser, helps=helps)
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached activations")
    parser.add_argument(
        "--full", action="store_true", help="print every condition, not only the best per vector kind"
    )
    add_overwrite_flag(parser)
    return parser


def add_overwrite_flag(parser: argparse.ArgumentParser, what: str = "run folder") -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an existing {what} (without it, an existing one is refused and nothing is written)",
    )


def config_flag_names() -> set[str]:
    """Every config flag's name (its dest): the shared fields and every registered protocol's options (an
    option group's as ``<group>_<field>``)."""
    shared = {f.name for f in fields(ExperimentConfig)} - set(NOT_FLAGS)
    return shared | {name for options in all_options().values() for name, *_ in option_specs(options)}


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The config file (``--config``), overridden by every flag given."""
    data: dict = {}
    if args.config is not None:
        try:
            data = json.loads(args.config.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read config {args.config}: {err}") from None
        if not isinstance(data, dict):
            raise UserError(f"config {args.config} is not a JSON object")
        pair = FAMILIES.get(data.get("pair", ExperimentConfig.pair), FAMILIES[ExperimentConfig.pair])
        if "template" not in data and pair.pretrained:
            # Written before templates existed: those pretrained runs used the original form.
            data["template"] = "lives-in"
        if getattr(args, "protocol", None) is not None:  # the protocol that will run reads the record
            data["protocol"] = args.protocol
        data, dropped = current_record(data)
        if dropped:
            warn(
                f"config {args.config}: {', '.join(dropped)} dropped: options of another protocol, recorded "
                "when config.json carried every protocol's fields"
            )
    known = config_flag_names()
    for key, value in vars(args).items():
        if key in known and value is not None:  # analysis scripts add flags of their own
            data[key] = value
    return ExperimentConfig.from_dict(data)


def check_writable(folder: Path) -> None:
    """Fail before any work if the run folder cannot be created and written."""
    parent = folder.parent
    blocking = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # mkdir would only say "File exists"
        raise UserError(f"output folder {folder} is not writable: {blocking} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".mi_bridge-probe-"):
            pass
    except OSError as err:
        raise UserError(f"output folder {folder} is not writable: {err.strerror or err}") from None
    if folder.exists() and not folder.is_dir():
        raise UserError(f"output path {folder} exists and is not a folder")


def versions() -> dict:
    """Provenance recorded in every run folder."""

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    from mi_bridge.runtime.backend import BACKEND  # the backend reports its own version

    return {
        "python": platform.python_version(),
        "torch": version("torch"),
        **BACKEND.provenance(),
        **{name: version(name) for name in ("transformers", "mi_bridge")},
        "git_revision": git_revision(),
    }


def git_revision() -> str | None:
    """The checkout's commit (with '+dirty' for uncommitted changes), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def publish_run(
    folder: Path,
    config: ExperimentConfig,
    results: dict,
    write_rest: Callable[[Path], None],
    overwrite: bool = False,
) -> None:
    """A run folder: ``config.json`` (repeats the run), ``results.json``, and what ``write_rest`` adds
    (report, figures, bridges, items), staged in a hidden folder and renamed into place; an existing
    folder is replaced only with ``overwrite``."""

    def write(staging: Path) -> None:
        write_json(staging / "config.json", config.to_dict())
        write_json(staging / "results.json", results)
        write_rest(staging)

    publish_folder(folder, write, overwrite=overwrite)
