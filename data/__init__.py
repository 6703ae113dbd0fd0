"""Data layer: image reading, dataset readers (M3FD, paired folders), validation and synthetic scenes."""
