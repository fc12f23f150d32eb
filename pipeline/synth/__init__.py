"""Synthetic extracts with ground truth, for testing linkage and matching end to end.

    >>> from pipeline.synth import generate
    >>> generate(Path("demo/input"), persons=3000, seed=7, profile="realistic")  # doctest: +SKIP

writes `raw/` (the eight inputs of a run, each following its contract in schemas/) and `truth/`
(who every record belongs to, every person's true attributes, and the parameters used).
Only synthetic data: NHS numbers come from the 999 test range, postcodes from invented areas.

Modules, in the order the generator uses them:
- study.py        the evaluation's design: sites, MDTs, operating models, dates, arm and consent shares
- profiles.py     fault rates of the clean / realistic / hard profiles (PROFILES)
- rates.py        the need score and the yearly service-use rates it drives
- geography.py    postcodes, LSOAs and IMD deciles
- names.py        forenames, surnames and nicknames
- identifiers.py  NHS numbers (test range, Modulus 11) and dates of birth
- population.py   the people: characteristics, need, selection into arms, consent, identifiers
- survey.py       EQ-5D-5L, VAS, ASCOT at baseline and follow-up
- events.py       service use per chunk of people (vectorised)
- faults.py       the identifiers each record carries, with faults injected
- extracts.py     consent register, postcode lookup, and extracts with duplicates and record ids
- writer.py       deterministic Parquet writing
- native.py       the five sources again in providers' layouts (`--layout nhs`), through the shipped mappings
- generator.py    generate(): all of the above, chunk by chunk
"""

from pipeline.synth.generator import generate
from pipeline.synth.profiles import PROFILES, FaultRates

__all__ = ["PROFILES", "FaultRates", "generate"]
