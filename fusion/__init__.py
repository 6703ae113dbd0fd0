"""Image fusion: the DAE-Fuse model, fusion metrics, every fuser, video fusion and the trainers.

Subpackages, each importing only those listed before it (``tests/test_layout.py`` checks it):

* ``models``: the DAE-Fuse network, its inference copy and its checkpoint format;
* ``metrics``: the image fusion metrics (``python -m fusion.metrics``);
* ``fusers``: the fuser interface and registry, the simple rules, pre-fused folders, the checkpoint fuser, every
  fuser by name (``create_fuser``), folder fusion (``python -m fusion.fusers.fuse``);
* ``video``: streams, optical flow, temporal metrics, streaming fusion and its stabiliser, sudden changes of
  visibility;
* ``training``: the training config, data and losses, the DAE-Fuse trainer, the ablation and the temporal
  fine-tuning.

``models`` and ``metrics`` import neither each other nor anything above. Nothing in ``fusion`` imports
``detection`` or ``pipelines``. ``configs`` (training presets) and ``weights`` (released checkpoints) are data.
"""
