"""The privacy core: canonical forms, keys and tokens (token spec v1). The only code that loads the key."""
