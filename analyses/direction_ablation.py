"""``python analyses/direction_ablation.py [flags]``: runs ``mi_bridge.analyses.direction_ablation`` (the script ships in the package)."""

import runpy

runpy.run_module("mi_bridge.analyses.direction_ablation", run_name="__main__", alter_sys=True)
