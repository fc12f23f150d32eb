"""Stage 2: linkage on tokens. Deterministic ranks 1-5 (pipeline.link.deterministic), then the
probabilistic rank P for what they leave (pipeline.link.probabilistic); pipeline.link.stage runs both.

The names below are imported on first use: a package that re-exports imports everything it names,
and an import chain through here should bring only what its caller uses.
"""

from __future__ import annotations

from pipeline.lazy import lazy_exports

_EXPORTS = {
    "RANK_RULES": "pipeline.link.deterministic",
    "candidate_pairs": "pipeline.link.deterministic",
    "link_deterministic": "pipeline.link.deterministic",
    "resolve_links": "pipeline.link.deterministic",
    "run_link": "pipeline.link.stage",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
