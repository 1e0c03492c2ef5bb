"""A ledger writer run as a separate process by the crash and concurrency tests.

``python writer_proc.py TARGET KEYSTORE ACTOR COUNT [GO_FILE]`` appends COUNT entries
(COUNT 0: forever) signed by ACTOR, alternating single appends and batches of 1-20, and
prints ``committed <n>`` after every commit. With GO_FILE it waits for that file first,
so several writers start together.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from pharmafl.audit.keys import KeyStore
from pharmafl.audit.ledger import Ledger

PASSPHRASE = "correct horse battery staple"


def main(target: str, keystore: str, actor: str, count: int, go: str | None = None) -> None:
    keys = KeyStore(keystore, PASSPHRASE, scrypt_n=2**14)
    keys.get_or_create(actor)
    keys.get_or_create("server")
    if go:
        while not Path(go).exists():
            time.sleep(0.005)
    rng = random.Random(actor)
    done = 0
    with Ledger.open(target, keys) as ledger:
        while count == 0 or done < count:
            n = 1 if rng.random() < 0.5 else rng.randint(1, 20)
            if count:
                n = min(n, count - done)
            items = [
                (actor, "round_note", {"writer": actor, "i": done + j, "pad": "x" * rng.randint(0, 300)})
                for j in range(n)
            ]
            if n == 1:
                ledger.append(*items[0])
            else:
                ledger.append_many(items)
            done += n
            print(f"committed {done}", flush=True)
            time.sleep(rng.uniform(0, 0.004))  # a little work between events, as in a real run


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None)
