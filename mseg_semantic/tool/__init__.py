"""Entry points with the original repository's paths, so the paper's README commands keep working."""
