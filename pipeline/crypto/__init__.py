"""The privacy core, token spec v3 (docs/token-spec.md). The only code that loads the key.

- `keys`: the key file, where a run loads the key from, the kid;
- `normalise`, `names`: canonical forms of NHS numbers, dates, sex, postcodes and names;
- `tokens`: field keys, tokens, record tokens and release study IDs;
- `near`: the near-miss fragments of dates, postcodes and names (spec v3);
- `spec`: the spec version and the metadata a token file carries (key-free, read by the link stage);
- `hmac_batch`, `hmac_pool`: HMAC-SHA256 of many values fast, on every core;
- `cli_keys`: `pipeline keys new | kid | which`.
"""
