"""``python -m mi_bridge.analyses {all | NAME ...}``: several analyses on one set of loaded models.

The scripts are modules of this package (``mi_bridge.analyses.<name>``), so every one of them ships in
the wheel; they run on one shared cache of activations, with a combined ``report.md``, in one folder
(default ``runs/analyses/<all or the names>-<pair>-<models>-<layers>-<tag>-<hash of the settings>``; an
existing one is refused unless --overwrite replaces it). Examples:

    python -m mi_bridge.analyses all --pair toy
    python -m mi_bridge.analyses logit_lens norm_ablation --pair toy --seeds 2
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from mi_bridge import cli
from mi_bridge.analyses.common import (
    analyze_and_publish,
    applies,
    build_parser,
    check_applies,
    default_folder,
    not_applicable,
    prepare_context,
    resolved_config,
)
from mi_bridge.errors import UserError
from mi_bridge.files import remove_folder, write_text_atomic
from mi_bridge.report import render as report
from mi_bridge.run_folder import check_new

ORDER = (
    "sender_probe",
    "lookup_phase",
    "alignment_inflation",
    "logit_lens",
    "norm_ablation",
    "direction_ablation",
    "layer_sweep",
    "alignment_vs_usability",
    "usability_bridge",
    "learning_curve",
    "injection_site",
)


def load_script(name: str) -> ModuleType:
    if name not in ORDER:  # a known name only: nothing from the command line becomes a path
        raise UserError(f"no analysis script named {name!r} (known: {', '.join(ORDER)})")
    return importlib.import_module(f"mi_bridge.analyses.{name}")


def listing(modules: list[ModuleType]) -> str:
    """The analyses by name with their hypotheses, for ``--help``."""
    width = max(len(m.NAME) for m in modules)
    lines = [f"  {m.NAME:<{width}}  {' '.join(m.HYPOTHESIS.split())}" for m in modules]
    return "analyses (all: every one, in this order):\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        names = []
        while argv and not argv[0].startswith("-"):
            names.append(argv.pop(0))
        if not names and {"-h", "--help"} & set(argv):  # help needs no names: show every script's flags
            names = ["all"]
        if not names:
            raise UserError(f"name the analyses to run, or 'all' ({', '.join(ORDER)})")
        everything = names == ["all"]
        modules = [load_script(name) for name in (ORDER if everything else names)]
        description, _, examples = __doc__.partition("\n\n")
        epilog = f"{listing([load_script(n) for n in ORDER])}\n\n{examples}"
        parser = build_parser("python -m mi_bridge.analyses {all | NAME ...}", description, modules, epilog)
        options = parser.parse_args(argv)
        config = cli.config_from_args(options)
        skipped = [m for m in modules if not applies(m, config.protocol)]
        if not everything:  # a script named explicitly that does not apply is bad input
            for module in skipped:
                check_applies(module, config.protocol)
        modules = [m for m in modules if m not in skipped]
        config = resolved_config(config)
        label = "all" if everything else "+".join(m.NAME for m in modules)
        ran = [m.NAME for m in modules]
        root = Path(config.out) if config.out else default_folder(label, config, options, analyses=ran)
        check_new(root, options.overwrite)
        ctx = prepare_context(config, options)  # models loaded once, activations shared by every script
        if options.overwrite:
            remove_folder(root)
        root.mkdir(parents=True, exist_ok=True)
        results = []
        for module in modules:
            results.append(analyze_and_publish(module, ctx, root / module.NAME))
        combined = ["# mi_bridge analyses", ""]
        combined += [f"- **{r.name}**: {r.verdict}" for r in results]
        for module in skipped:
            line = not_applicable(module, config.protocol)
            report.console.print(line)
            combined.append(f"- {line}")
        combined.append("")
        for r in results:
            combined.append(report.result_markdown(r, figure=f"{r.name}/figure.png", heading="##"))
        combined.insert(2, report.site_line(ctx.site()) + "\n")

        write_text_atomic(root / "report.md", "\n".join(combined))
        report.console.print(f"combined report: {root / 'report.md'}")
        return 0

    return cli.one_line_errors(body, "finished analyses are kept, cached activations too")
