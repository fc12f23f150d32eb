"""Stage 3b: write-audit-publish of a versioned, immutable release, and its audit."""

from pipeline.publish.release import publish_release, stage_release, validate_release

__all__ = ["publish_release", "stage_release", "validate_release"]
