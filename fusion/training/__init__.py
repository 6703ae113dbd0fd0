"""Training: the config (``config``, presets in ``fusion/configs``), data (``data``) and losses (``losses``), the
DAE-Fuse trainer (``train``), the ablation (``ablate``) and the temporal fine-tuning (``temporal_train``). The top
of ``fusion``: may import every other subpackage, and none imports it."""
