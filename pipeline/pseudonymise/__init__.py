"""Stage 1, run by the key holder only: check inputs, apply the consent gate, tokenise identifiers."""

from pipeline.pseudonymise.consent import run_consent_gate
from pipeline.pseudonymise.inputs import check_inputs
from pipeline.pseudonymise.records import payload_contract, pseudonymise_source

__all__ = ["check_inputs", "payload_contract", "pseudonymise_source", "run_consent_gate"]
