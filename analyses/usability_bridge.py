"""``python analyses/usability_bridge.py [flags]``: runs ``mi_bridge.analyses.usability_bridge`` (the script ships in the package)."""

import runpy

runpy.run_module("mi_bridge.analyses.usability_bridge", run_name="__main__", alter_sys=True)
