"""Reports read the store only; they never import training code."""
