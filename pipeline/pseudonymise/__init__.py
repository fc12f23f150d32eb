"""Stage 1, run by the key holder only: check inputs, apply the consent gate, tokenise identifiers.

The names below are imported on first use, so importing one module of this package (the input
check, say) does not load the key-holding ones with it; tests/test_key_boundary.py holds the line.
"""

from __future__ import annotations

from pipeline.lazy import lazy_exports

_EXPORTS = {
    "check_inputs": "pipeline.pseudonymise.inputs",
    "pseudonymise_source": "pipeline.pseudonymise.records",
    "run_consent_gate": "pipeline.pseudonymise.consent",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
