"""Fusion quality metrics of still images (``image``): EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM and their registry.

``python -m fusion.metrics`` scores a folder of fused images against its sources (``fusion.metrics.image.main``).
The temporal metrics of fused videos read streams and optical flow, so they live above, in ``fusion.video``.
"""
