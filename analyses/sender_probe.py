"""``python analyses/sender_probe.py [flags]``: runs ``mi_bridge.analyses.sender_probe`` (the script ships in the package)."""

import runpy

runpy.run_module("mi_bridge.analyses.sender_probe", run_name="__main__", alter_sys=True)
