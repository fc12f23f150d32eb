"""Stage 1, run by the key holder only: check inputs, apply the consent gate, tokenise identifiers.

The names below are imported on first use, so importing one module of this package (the input
check, say) does not load the key-holding ones with it; tests/test_key_boundary.py holds the line.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "check_inputs": "pipeline.pseudonymise.inputs",
    "pseudonymise_source": "pipeline.pseudonymise.records",
    "run_consent_gate": "pipeline.pseudonymise.consent",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline.pseudonymise' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
