"""Errors a user can act on, kept apart from internal errors.

Every user-facing message names the file, the column and the rule that was broken and says what to
do. None ever carries a value from a patient's record.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (file, column), which rule, and what to do or how many rows."""

    file: str
    column: str | None
    rule: str
    detail: str

    def __str__(self) -> str:
        where = f"{self.file}, column {self.column}" if self.column else self.file
        return f"{where}: rule '{self.rule}' broken: {self.detail}"


class PipelineError(Exception):
    """Base of the errors that tell a user what went wrong with their input and what to do."""


class ContractError(PipelineError):
    """A file breaks its data contract. Carries every violation found, not just the first."""

    def __init__(self, violations: list[Violation]):
        self.violations = list(violations)
        lines = [f"{len(self.violations)} contract violation(s):"] + [f"  - {v}" for v in self.violations]
        super().__init__("\n".join(lines))


class SettingsError(PipelineError):
    """A run setting is missing, malformed or out of range (a flag of `pipeline run`, a Param of the
    trigger form); the message names it as the user set it (pipeline.settings.setting)."""


class UnknownDatasetError(PipelineError):
    """A dataset name that no contract in schemas/ has (a typo in `pipeline check DATASET FILE`, say).
    The message lists the names there are."""


class ReleaseFolderError(PipelineError):
    """A path given as a release folder is not one (missing, not a folder, or without its manifest)."""


class SynthSettingsError(PipelineError, ValueError):
    """A setting of the synthetic generator (`pipeline synth`) is out of range. Also a ValueError,
    which the generator raised for these before."""


class OutputFolderError(PipelineError):
    """A folder the user named for output (`pipeline synth --out`) cannot be made or written."""


class KeyFileError(PipelineError):
    """The linkage key is missing, malformed or too widely readable."""


class KeyEnvironmentError(KeyFileError):
    """The key was offered in an environment variable (`PPRL_KEY`), which no file mode can protect:
    every child process inherits it and /proc/<pid>/environ shows it."""


class InputOutsideFolderError(PipelineError):
    """An input is a symbolic link to a file outside the input folder (`raw_dir`)."""


class KeyMismatchError(PipelineError):
    """Tokens made under different key ids were about to be linked."""


class TokenSpecMismatchError(PipelineError):
    """Tokens made under different token spec versions (docs/token-spec.md) were about to be linked."""


class ValidationFailed(PipelineError):
    """A critical Great Expectations expectation failed; publication is blocked."""


class ReleaseExistsError(PipelineError):
    """A release with this label already exists and replacing it was not asked for."""


class PublishingKeyError(PipelineError):
    """The publishing key (which signs releases) is missing, malformed or too widely readable."""


class SignatureError(PipelineError):
    """A release's signature is missing, does not verify, or was made with a key that is not trusted."""


class ReleaseLogError(PipelineError):
    """The hash-chained release log is unreadable, broken, or does not record a release as published."""


class PreflightError(ContractError):
    """A run cannot start: its settings, inputs, key file or release label are not ready.

    Raised before any work, with every problem listed. A ContractError, because each problem is a
    Violation naming the file (or folder) and the rule, like a broken input contract.
    """

    def __init__(self, violations: list[Violation]):
        super().__init__(violations)
        lines = [f"the run cannot start: {len(self.violations)} problem(s), nothing was done:"]
        lines += [f"  - {v}" for v in self.violations]
        Exception.__init__(self, "\n".join(lines))


class StudyError(PipelineError):
    """A study file (`studies/<name>.yaml`) is not usable. Carries every problem found, each named by
    its YAML key path (e.g. `teams[3].site`) with what to do."""

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.path = path
        self.problems = list(problems)
        lines = [f"{path}: {len(self.problems)} problem(s) in the study file:"]
        lines += [f"  - {key}: {what}" for key, what in self.problems]
        super().__init__("\n".join(lines))


class PathOutsideRootsError(PipelineError):
    """A path setting (`raw_dir`, `work_dir`, `key_file`, ...) resolves outside the data roots the
    deployment allows (`PPRL_DATA_ROOTS`)."""
