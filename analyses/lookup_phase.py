"""``python analyses/lookup_phase.py [flags]``: runs ``mi_bridge.analyses.lookup_phase`` (the script ships in the package)."""

import runpy

runpy.run_module("mi_bridge.analyses.lookup_phase", run_name="__main__", alter_sys=True)
