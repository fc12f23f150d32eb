"""What the cohort stage hands to the release: one Parquet file per release table, written by
`build_cohort` to `linked/<label>/cohort/<table>.parquet` keyed by participant_id, plus any
artefacts (images) in `linked/<label>/cohort/artefacts/`. The publish step swaps participant_id for
the release's study_id, casts each table to its contract in `schemas/` and copies the artefacts.
"""

# Release tables, each with a contract of the same name in schemas/ (zone: release).
RELEASE_TABLES: tuple[str, ...] = ("cohort", "service_use", "balance")
ARTEFACTS_DIR = "artefacts"
