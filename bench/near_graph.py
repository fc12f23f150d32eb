"""What the near-miss tokens of token spec v3 reveal without the key: the similarity graph.

Anyone holding a token file sees which rows share a near-miss token, so which values are one edit
apart; the graph attacks on Bloom-filter encodings (docs/token-spec.md section 7) match that graph to
the one built from public values. This measures how far the graph reaches, on values in clear
(nothing keyed): the nodes are the distinct (value, salt) pairs, two are joined when they share a
fragment. A graph in one piece spanning every value has the shape of the calendar or the postcode map
and can be matched to the public one; pieces of one or two values have no shape, and what is left
to an attacker there is their frequency (bounded by tests/test_token_frequency.py).

    .venv/bin/python bench/near_graph.py                      # census-like, 1,000,000 people
    .venv/bin/python bench/near_graph.py --synthetic-study    # the synthetic `hard` register, 50,000

The census-like population (`census_like`): sex half and half; age 0-99 flat to 60, then falling
linearly to a twentieth at 99 (the shape of England's 2021 census), birthday uniform in the year;
names from the synthetic generator's lists and weights (`pipeline.synth.names`; shorter lists than
a real population's, so the name graphs are smaller than real ones); postcode units from the
generator's geography sized for about 40 people per unit (England: about 1.6 million units for 57
million people), about 25,000 units per million people, people spread uniformly over them.

Prints, per near-miss column and salt (the salt of token spec v3, or of its draft for the dropped
date and postcode columns, marked `*`), the distinct
(value, salt) nodes, the share of them in the largest piece, in pieces of at least 100 values
(enough shape to be matched) and in pieces of at most 2 (no shape). About 15 minutes at a million
on a loaded 2-core machine (load average 14-17), most of it making the fragments in Python.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from pipeline.crypto import near  # noqa: E402

PEOPLE_PER_POSTCODE = 40
MASK = "_"


def masked_fragments(value: str | None, salt: str | None) -> list[str] | None:
    """The fragments a draft of token spec v3 made of a date of birth or postcode unit (dropped:
    docs/token-spec.md section 7): the value with each character other than `-` replaced by `_` in
    turn, each `|` salt, sorted. Two values of equal length share one exactly when they differ in at
    most one position."""
    if not value or not salt:
        return None
    return sorted({value[:i] + MASK + value[i + 1 :] + near.SALT_SEPARATOR + salt for i, ch in enumerate(value) if ch != "-"})
REFERENCE_YEAR = 2026


def census_like(persons: int, seed: int) -> pl.DataFrame:
    """A register-shaped frame (given_name, family_name, date_of_birth, sex, postcode) of `persons`
    census-like people (module docstring)."""
    from pipeline.synth.geography import build_geography, PERSONS_PER_LSOA, POSTCODES_PER_LSOA
    from pipeline.synth.names import draw_names

    rng = np.random.default_rng(seed)
    female = rng.random(persons) < 0.5
    names = draw_names(rng, female)
    ages = np.arange(100)
    weight = np.where(ages < 60, 1.0, 1.0 - 0.95 * (ages - 60) / 39)
    age = rng.choice(100, size=persons, p=weight / weight.sum())
    start = pl.Series([f"{REFERENCE_YEAR - 1 - a}-01-01" for a in range(100)]).str.to_date().cast(pl.Int32).to_numpy()
    dob = start[age] + np.floor(rng.random(persons) * 365.25).astype(np.int64)
    # build_geography makes ~POSTCODES_PER_LSOA units per PERSONS_PER_LSOA people; ask it for as many
    # "people" as give one unit per PEOPLE_PER_POSTCODE real people.
    sized = persons * PERSONS_PER_LSOA // (POSTCODES_PER_LSOA * PEOPLE_PER_POSTCODE)
    units = build_geography(rng, {"S1": max(sized, 1)}).lookup.get_column("postcode")
    return pl.DataFrame(
        {
            "nhs_number": pl.Series([None] * persons, dtype=pl.String),
            "given_name": names.given,
            "family_name": names.family,
            "date_of_birth": pl.Series(dob, dtype=pl.Int32).cast(pl.Date),
            "sex": pl.Series(np.where(female, "F", "M")),
            "postcode": units.gather(rng.integers(0, units.len(), size=persons)),
        }
    )


def piece_sizes(fragments: list[list[str]]) -> np.ndarray:
    """Per node, the size of its connected piece in the graph joining nodes that share a fragment
    (connected components of the node-fragment bipartite graph)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(fragments)
    edges = pl.DataFrame({"f": fragments}).with_row_index("node").explode("f").drop_nulls("f")
    frag_id = edges.get_column("f").cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    node = edges.get_column("node").to_numpy().astype(np.int64)
    m = int(frag_id.max()) + 1 if frag_id.size else 0
    graph = coo_matrix((np.ones(node.size, dtype=np.int8), (node, n + frag_id)), shape=(n + m, n + m))
    _, label = connected_components(graph, directed=False)
    label = label[:n]
    return np.bincount(label)[label]


def salt_options(canon: pl.DataFrame) -> dict[str, tuple[pl.Series, callable, dict[str, pl.Series]]]:
    """Per near-miss column: the value, the fragment function, and the salts to compare (name ->
    salt per row); the first is token spec v3's (or its draft's, for the dropped date and postcode
    columns)."""
    c = {k: canon.get_column(k) for k in ("tok_surname", "tok_forename_first", "tok_dob", "tok_postcode")}
    sur_i, fore_i, year = c["tok_surname"].str.head(1), c["tok_forename_first"].str.head(1), c["tok_dob"].str.head(4)
    sex = canon.get_column("sex").str.to_uppercase().str.head(1)
    return {
        "tok_surname_near": (c["tok_surname"], near.name_fragments, {
            "forename initial*": fore_i, "forename initial+sex": fore_i + sex, "forename initial+year of birth": fore_i + year,
            "none": pl.Series(["-"] * canon.height)}),
        "tok_forename_near": (c["tok_forename_first"], near.name_fragments, {
            "surname initial*": sur_i, "surname initial+sex": sur_i + sex, "surname initial+year of birth": sur_i + year,
            "none": pl.Series(["-"] * canon.height)}),
        "tok_dob_near": (c["tok_dob"], masked_fragments, {
            "surname initial*": sur_i, "both initials": sur_i + fore_i, "surname initial+sex": sur_i + sex,
            "both initials+sex": sur_i + fore_i + sex, "surname": c["tok_surname"], "none": pl.Series(["-"] * canon.height)}),
        "tok_postcode_near": (c["tok_postcode"], masked_fragments, {
            "year of birth*": year, "year of birth+sex": year + sex, "surname initial": sur_i, "none": pl.Series(["-"] * canon.height)}),
    }  # fmt: skip


def measure(register: pl.DataFrame) -> list[dict]:
    from pipeline.pseudonymise.identifiers import canonical_forms

    canon = canonical_forms(register.lazy()).collect()
    out = []
    for column, (value, make, salts) in salt_options(canon).items():
        for name, salt in salts.items():
            nodes = pl.DataFrame({"v": value, "s": salt}).drop_nulls().unique()
            sizes = piece_sizes([make(v, s) or [] for v, s in nodes.iter_rows()])
            n = sizes.size
            out.append({
                "column": column, "salt": name, "values": n, "pieces": int((1.0 / sizes).sum().round()) if n else 0,
                "largest": int(sizes.max(initial=0)) / max(n, 1), "ge100": float((sizes >= 100).mean()) if n else 0.0,
                "le2": float((sizes <= 2).mean()) if n else 0.0,
            })  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--synthetic-study", action="store_true", help="the synthetic `hard` study's register instead (default 50,000 people)")
    args = ap.parse_args()
    if args.synthetic_study:
        from pipeline.synth import generate

        persons = args.persons if args.persons != 1_000_000 else 50_000
        base = HERE / ".cache" / f"linkage-hard-{persons}-s{args.seed}"
        if not (base / ".complete").exists():
            generate(base, persons=persons, seed=args.seed, profile="hard")
        register = pl.read_parquet(base / "raw" / "consent_register.parquet").select(
            "nhs_number", "given_name", "family_name", "date_of_birth", "sex", "postcode"
        )
    else:
        register = census_like(args.persons, args.seed)
    print(f"{register.height:,} people")
    print(f"{'column':18} {'salt':32} {'values':>9} {'pieces':>8} {'largest':>8} {'>=100':>6} {'<=2':>6}")
    for r in measure(register):
        print(f"{r['column']:18} {r['salt']:32} {r['values']:9,} {r['pieces']:8,} {r['largest']:8.3f} {r['ge100']:6.3f} {r['le2']:6.3f}")


if __name__ == "__main__":
    main()
