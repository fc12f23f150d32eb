"""What a token file says about itself: the token spec version and the Parquet metadata keys that
carry it and the key id. Key-free on purpose: the link stage reads these names to refuse files made
under another key or spec, and must not import the code that holds the key (tests/test_key_boundary.py).

    >>> token_file_metadata("bf991a618eff74c0")
    {'pprl_kid': 'bf991a618eff74c0', 'pprl_spec': 'v3'}
"""

from __future__ import annotations

SPEC_VERSION = "v3"
# Parquet metadata keys every token file carries: the key id and the spec version its tokens follow.
KID_METADATA, SPEC_METADATA = "pprl_kid", "pprl_spec"


def token_file_metadata(kid: str) -> dict[str, str]:
    """The Parquet metadata every token file carries: the key id and the spec version of its tokens.
    The link stage refuses files that differ in either."""
    return {KID_METADATA: kid, SPEC_METADATA: SPEC_VERSION}
