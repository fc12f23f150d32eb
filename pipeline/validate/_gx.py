"""The one place Great Expectations is imported and configured.

Every module of this package imports `gx` from here, never `great_expectations` directly, so the
logger and analytics settings below are in force before GX's own import-time code runs.
"""

from __future__ import annotations

import logging
import os

# GX logs many INFO lines at import and while validating; some of its error logs quote exception
# text, which can echo a data value, so nothing below WARNING is let through.
logging.getLogger("great_expectations").setLevel(logging.WARNING)
# GX reads this once, at import. The pipeline runs inside a secure environment and must not call
# out to an analytics service, whatever the user's environment says.
os.environ["GX_ANALYTICS_ENABLED"] = "False"

import great_expectations as gx  # noqa: E402  (must follow the two settings above)
from great_expectations.core.expectation_validation_result import (  # noqa: E402
    ExpectationSuiteValidationResult,
    ExpectationValidationResult,
)
from great_expectations.core.run_identifier import RunIdentifier  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.data_context.types.resource_identifiers import (  # noqa: E402
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from great_expectations.expectations.expectation_configuration import ExpectationConfiguration  # noqa: E402
from great_expectations.execution_engine import pandas_execution_engine as _pandas_engine  # noqa: E402
from great_expectations.render.renderer.renderer import Renderer  # noqa: E402
from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView  # noqa: E402
from great_expectations.validator.v1_validator import Validator  # noqa: E402

# GX fingerprints every pandas batch below this many bytes with an MD5 over all its values: a full
# pass over the data that costs as much as a cheap expectation, and a hash of the data itself, which
# pipeline.validate.privacy drops from every result anyway. Zero turns it off.
_pandas_engine.HASH_THRESHOLD = 0

__all__ = [
    "DataContextConfig",
    "DefaultJinjaIndexPageView",
    "DefaultJinjaPageView",
    "ExpectationConfiguration",
    "ExpectationSuiteIdentifier",
    "ExpectationSuiteValidationResult",
    "ExpectationValidationResult",
    "InMemoryStoreBackendDefaults",
    "ProgressBarsConfig",
    "Renderer",
    "RunIdentifier",
    "ValidationResultIdentifier",
    "Validator",
    "gx",
]
