"""Every fuser behind one interface: the interface and the registry (``base``), the simple rules (``baselines``),
a DAE-Fuse checkpoint (``fuse``, which also fuses folders: ``python -m fusion.fusers.fuse``) and another method's
fused images on disk (``prefused``). Imports ``fusion.models`` and ``fusion.metrics``, nothing above."""
