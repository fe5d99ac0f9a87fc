"""``python -m mi_bridge.analyses``: see ``mi_bridge.analyses.runner``."""

import sys

from mi_bridge.analyses.runner import main

sys.exit(main())
