"""``python analyses/kv_channel.py [flags]``: runs ``mi_bridge.analyses.kv_channel`` (the script ships in the package)."""

import runpy

runpy.run_module("mi_bridge.analyses.kv_channel", run_name="__main__", alter_sys=True)
