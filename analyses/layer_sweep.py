"""``python analyses/layer_sweep.py [flags]``: runs ``mi_bridge.analyses.layer_sweep`` (the script ships in the package)."""

import runpy

runpy.run_module("mi_bridge.analyses.layer_sweep", run_name="__main__", alter_sys=True)
