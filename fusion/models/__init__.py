"""The DAE-Fuse network (``dae_fuse``), its inference copy (``inference``) and its checkpoint format
(``checkpoint``; ``python -m fusion.models.checkpoint release``). The bottom of ``fusion``: imports no other
subpackage."""
