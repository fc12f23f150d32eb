"""MDT evaluation record-linkage pipeline: pseudonymise, link, validate and publish matched cohorts."""

__version__ = "0.1.0"
