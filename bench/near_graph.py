"""What the near-miss tokens of token spec v3 reveal without the key: the similarity graph.

Anyone holding a token file sees which rows share a near-miss token, so which values are one edit
apart; the graph attacks on Bloom-filter encodings (docs/token-spec.md section 7) match that graph to
the one built from public values. This measures, on a synthetic population's register (in clear,
nothing keyed), how far the graph reaches: the values are the nodes, two values are joined when they
share a fragment, with the salts of token spec v3 (section 3.8) and without them. A graph in one
piece spanning every value can be matched to the public one; small pieces with no shape cannot.

    .venv/bin/python bench/near_graph.py [--persons 50000] [--seed 2026]

Prints, per near-miss column, the distinct values, the number of connected pieces and the share of
values in the largest piece, salted and unsalted. A few seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import polars as pl  # noqa: E402


def pieces(nodes: list[tuple], fragments: list[list[str]]) -> tuple[int, int, int]:
    """(values, connected pieces, values in the largest piece) of the graph joining values that
    share a fragment (union-find over the fragments)."""
    parent = list(range(len(nodes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, frags in enumerate(fragments):
        for f in frags:
            j = first.setdefault(f, i)
            a, b = root(i), root(j)
            if a != b:
                parent[a] = b
    sizes: dict[int, int] = {}
    for i in range(len(nodes)):
        r = root(i)
        sizes[r] = sizes.get(r, 0) + 1
    return len(nodes), len(sizes), max(sizes.values(), default=0)


def measure(register: pl.DataFrame) -> list[dict]:
    from pipeline.crypto import near
    from pipeline.pseudonymise.identifiers import canonical_forms

    canon = canonical_forms(register.lazy()).collect()
    surname, first, dob, pc = (canon.get_column(c) for c in ("tok_surname", "tok_forename_first", "tok_dob", "tok_postcode"))
    cases = {
        "tok_surname_near": (surname, first.str.head(1), near.name_fragments),
        "tok_forename_near": (first, surname.str.head(1), near.name_fragments),
        "tok_dob_near": (dob, surname.str.head(1), near.masked_fragments),
        "tok_postcode_near": (pc, dob.str.head(4), near.masked_fragments),
    }
    out = []
    for column, (value, salt, make) in cases.items():
        for salted in (False, True):
            pairs = pl.DataFrame({"v": value, "s": salt if salted else pl.Series([""] * len(value))}).drop_nulls().unique()
            nodes = list(pairs.iter_rows())
            frags = [make(v, s if salted else "-") or [] for v, s in nodes]
            n, k, big = pieces(nodes, frags)
            out.append({"column": column, "salted": salted, "values": n, "pieces": k, "largest": big, "largest_share": big / n if n else 0.0})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--profile", default="hard")
    args = ap.parse_args()
    from pipeline.synth import generate

    base = HERE / ".cache" / f"linkage-{args.profile}-{args.persons}-s{args.seed}"
    if not (base / ".complete").exists():
        generate(base, persons=args.persons, seed=args.seed, profile=args.profile)
    register = pl.read_parquet(base / "raw" / "consent_register.parquet").select(
        "nhs_number", "given_name", "family_name", "date_of_birth", "sex", "postcode"
    )
    print(f"{'column':18} {'salt':8} {'values':>8} {'pieces':>8} {'largest':>8} {'share':>6}")
    for r in measure(register):
        print(f"{r['column']:18} {'salted' if r['salted'] else 'none':8} {r['values']:8,} {r['pieces']:8,} {r['largest']:8,} {r['largest_share']:6.3f}")


if __name__ == "__main__":
    main()
