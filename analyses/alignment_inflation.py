"""``python analyses/alignment_inflation.py [flags]``: runs ``mi_bridge.analyses.alignment_inflation`` (the script ships in the package)."""

import runpy

runpy.run_module("mi_bridge.analyses.alignment_inflation", run_name="__main__", alter_sys=True)
