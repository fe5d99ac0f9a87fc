"""``python analyses/learning_curve.py [flags]``: runs ``mi_bridge.analyses.learning_curve`` (the script ships in the package)."""

import runpy

runpy.run_module("mi_bridge.analyses.learning_curve", run_name="__main__", alter_sys=True)
