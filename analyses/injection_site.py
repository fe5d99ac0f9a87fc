"""``python analyses/injection_site.py [flags]``: runs ``mi_bridge.analyses.injection_site`` (the script ships in the package)."""

import runpy

runpy.run_module("mi_bridge.analyses.injection_site", run_name="__main__", alter_sys=True)
