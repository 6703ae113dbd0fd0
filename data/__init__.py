"""Data layer: image reading, datasets by name (``data.datasets.load_dataset``: M3FD, LLVIP, the synthetic scenes,
a team's own folders) with one set of checks, paired folders, splits and synthetic scenes."""
