"""Image fusion: metrics, simple fusers, the DAE-Fuse model, its trainer and inference."""
