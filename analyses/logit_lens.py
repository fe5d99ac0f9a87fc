"""``python analyses/logit_lens.py [flags]``: runs ``mi_bridge.analyses.logit_lens`` (the script ships in the package)."""

import runpy

runpy.run_module("mi_bridge.analyses.logit_lens", run_name="__main__", alter_sys=True)
