"""Stage 2: linkage on tokens. Deterministic ranks 1-5 (pipeline.link.deterministic)."""

from pipeline.link.deterministic import RANK_RULES, candidate_pairs, link_deterministic, resolve_links
from pipeline.link.stage import run_link

__all__ = ["RANK_RULES", "candidate_pairs", "link_deterministic", "resolve_links", "run_link"]
