"""Stage 3b: write-audit-publish of a versioned, immutable release, and its audit.

The stage's functions are imported on first use, so that `pipeline describe` and `pipeline audit`,
which need one small module of this package, do not wait for Great Expectations to load.
"""

from pipeline.lazy import lazy_exports

_EXPORTS = {name: "pipeline.publish.release" for name in ("publish_release", "stage_release", "validate_release")}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
