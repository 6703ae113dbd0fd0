"""Every fuser behind one interface, module by module from the bottom: the interface and the registry (``base``),
the simple rules (``baselines``), another method's fused images on disk (``prefused``), a DAE-Fuse checkpoint
(``dae_fuse``), every fuser by name: ``create_fuser``, ``fuser_names``, plug-ins (``catalog``), and folder fusion
(``fuse``: ``python -m fusion.fusers.fuse``). Imports ``fusion.models`` and ``fusion.metrics``, nothing above."""
