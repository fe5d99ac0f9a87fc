"""``python analyses/alignment_vs_usability.py [flags]``: runs ``mi_bridge.analyses.alignment_vs_usability`` (the script ships in the package)."""

import runpy

runpy.run_module("mi_bridge.analyses.alignment_vs_usability", run_name="__main__", alter_sys=True)
