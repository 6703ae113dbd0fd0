"""``python -m fusion.metrics``: score fused images against their sources (``fusion.metrics.image.main``)."""
from fusion.metrics.image import main

raise SystemExit(main())
