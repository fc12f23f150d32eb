"""`pipeline keys`: make a key file, print a key file's kid, or say which key a run would load.

    pipeline keys new --out /secure/pprl.key.json     # 0600, refuses to overwrite
    pipeline keys kid /secure/pprl.key.json           # the kid, for the run log or a provider
    pipeline keys which [--key FILE]                  # the kid and source a run would use
    pipeline keys new-publishing --out /secure/publishing.pem   # signs releases; writes FILE.pub too
    pipeline keys fingerprint /secure/publishing.pem.pub        # the publishing key's fingerprint

Nothing here ever prints the key. The publishing key (Ed25519, `pipeline.publish.signing`) is a
different key from the linkage key: it signs releases and never touches a token. `which` follows
`load_key` exactly (the key file, PPRL_KEY_FILE, the Airflow connection, the Airflow variable; a key
in PPRL_KEY is refused), so a data engineer can check which
secret a deployment will pick up before starting a run.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_keys_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `keys new`, `kid`, `which`, `new-publishing` and `fingerprint` on the top-level subparsers."""
    k = sub.add_parser("keys", help="create a linkage or publishing key, print its kid or fingerprint, or show which key a run would load")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kn = ksub.add_parser("new", help="write a new key file readable by its owner only (mode 0600)")
    kn.add_argument("--out", required=True, help="path of the new key file; an existing file is never replaced")
    kk = ksub.add_parser("kid", help="print the key id of a key file")
    kk.add_argument("file", help="a linkage key file (mode 0600)")
    kw = ksub.add_parser("which", help="print the kid and source of the key a run would load (never the key)")
    kw.add_argument("--key", help="the run's key file, as given to `pipeline run --key`")
    kp = ksub.add_parser("new-publishing", help="write a new publishing key (0600) that signs releases, and FILE.pub beside it")
    kp.add_argument("--out", required=True, help="path of the new private key; the public key goes to OUT.pub; never replaced")
    kf = ksub.add_parser("fingerprint", help="print the fingerprint of a publishing key file (public, or private at mode 0600)")
    kf.add_argument("file", help="a publishing key file: FILE.pub, or the private key at mode 0600")
    k.set_defaults(func=run_keys)
    return k


def run_keys(args: argparse.Namespace) -> int:
    if args.keys_command in ("new-publishing", "fingerprint"):
        return _publishing(args)
    from pipeline.crypto.keys import load_key, new_key_file, read_key_file

    if args.keys_command == "new":
        key = new_key_file(Path(args.out))
        print(f"new key written to {args.out} (mode 0600), kid {key.kid}")
        print("keep it out of git and back it up: tokens made under it can only be linked with it")
    elif args.keys_command == "kid":
        print(read_key_file(Path(args.file)).kid)
    else:
        key = load_key(args.key)
        print(f"kid {key.kid} from {key.source}")
    return 0


def _publishing(args: argparse.Namespace) -> int:
    from pipeline.publish.signing import key_file_fingerprint, new_publishing_key_file, public_key_path, show_fingerprint

    if args.keys_command == "new-publishing":
        key = new_publishing_key_file(Path(args.out))
        print(f"new publishing key written to {args.out} (mode 0600), public key to {public_key_path(Path(args.out))}")
        print(f"fingerprint {show_fingerprint(key.fingerprint)}")
        print("give the governance officer the .pub file or the fingerprint; keep the private key out of git and back it up")
    else:
        print(show_fingerprint(key_file_fingerprint(Path(args.file))))
    return 0
