"""MDT evaluation record-linkage pipeline."""
