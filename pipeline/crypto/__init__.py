"""The privacy core, token spec v1 (docs/token-spec.md). The only code that loads the key.

- `keys`: the key file, where a run loads the key from, the kid;
- `normalise`, `names`: canonical forms of NHS numbers, dates, sex, postcodes and names;
- `tokens`: field keys, tokens and release study IDs;
- `hmac_batch`, `hmac_pool`: HMAC-SHA256 of many values fast, on every core;
- `cli_keys`: `pipeline keys new | kid | which`.
"""
