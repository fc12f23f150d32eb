"""What the cohort stage hands to the release: one Parquet file per release table, written by
`build_cohort` to `linked/<label>/cohort/<table>.parquet` keyed by participant_id, plus any
artefacts (images, the reference tables used) in `linked/<label>/cohort/artefacts/`. The publish
step swaps participant_id for the release's study_id, casts each table to its contract in
`schemas/`, sorts it by the contract's primary key and copies the artefacts.
"""

# Release tables, each with a contract of the same name in schemas/ (zone: release).
RELEASE_TABLES: tuple[str, ...] = ("cohort", "matches", "balance", "service_use", "panel", "outcomes", "estimates")
ARTEFACTS_DIR = "artefacts"
# Named exactly so: the release audit page links it when present.
LOVE_PLOT = "love_plot.png"
# Copies of the reference tables the run used, so a release says which costs and value set it holds.
UNIT_COSTS_ARTEFACT = "unit_costs.csv"
VALUE_SET_ARTEFACT = "eq5d_value_set.csv"
