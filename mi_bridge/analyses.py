"""``python -m mi_bridge.analyses all`` (or one script's name): every hypothesis script in ``analyses/``
on one set of loaded models and one shared cache of activations, with a combined ``report.md``.

    python -m mi_bridge.analyses all --pair toy
    python -m mi_bridge.analyses logit_lens norm_ablation --pair toy --seeds 2
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from mi_bridge import cli, report
from mi_bridge.config import UserError

SCRIPTS_FOLDER = Path(__file__).resolve().parents[1] / "analyses"
ORDER = (
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
    path = SCRIPTS_FOLDER / f"{name}.py"
    if not path.exists():
        raise UserError(f"analysis script {path} is missing from this checkout")
    spec = importlib.util.spec_from_file_location(f"mi_bridge_analysis_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    from mi_bridge.analysis import (
        analyze_and_publish,
        applies,
        build_parser,
        check_applies,
        not_applicable,
        prepare_context,
    )
    from mi_bridge.cli import check_writable, config_from_args
    from mi_bridge.files import write_text_atomic

    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        names = []
        while argv and not argv[0].startswith("-"):
            names.append(argv.pop(0))
        if not names:
            raise UserError(f"name the analyses to run, or 'all' ({', '.join(ORDER)})")
        everything = names == ["all"]
        modules = [load_script(name) for name in (ORDER if everything else names)]
        parser = build_parser("python -m mi_bridge.analyses", __doc__.split("\n\n")[0], modules)
        options = parser.parse_args(argv)
        config = config_from_args(options)
        skipped = [m for m in modules if not applies(m, config.protocol)]
        if not everything:  # a script named explicitly that does not apply is bad input
            for module in skipped:
                check_applies(module, config.protocol)
        modules = [m for m in modules if m not in skipped]
        root = Path(config.out) if config.out else Path("runs") / "analyses" / f"all-{config.pair}"
        check_writable(root)
        ctx = prepare_context(config, options)  # models loaded once, activations shared by every script
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
        combined.insert(2, f"**{report.site_summary(ctx.site())}** {ctx.site()['explanation']}\n")

        write_text_atomic(root / "report.md", "\n".join(combined))
        report.console.print(f"combined report: {root / 'report.md'}")
        return 0

    return cli.one_line_errors(body, "finished analyses are kept, cached activations too")


if __name__ == "__main__":
    sys.exit(main())
