"""Video: checked stream sources (``sources``), optical flow (``flow``), temporal metrics (``temporal``), streaming
fusion and its stabiliser (``streaming``), sudden changes of visibility (``sudden_change``). Imports
``fusion.fusers``, ``fusion.metrics`` and ``fusion.models``, never ``fusion.training``."""
