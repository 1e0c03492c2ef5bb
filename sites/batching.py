"""Mini-batch plans over a site's pairs. Pure functions: indices in, lists of indices out.

``random``: the classic shuffle, ``batch_size`` pairs drawn without replacement.

``grouped`` (default): each target's pairs are shuffled and cut into chunks of at most
``group_size`` (default 32) pairs; the chunks of all targets are shuffled and packed into
batches of about ``batch_size`` pairs. Every pair is still visited exactly once per epoch; a
batch touches about ``batch_size / group_size`` targets instead of hundreds, so encoding each
unique target once costs a fraction of encoding every pair (protein encoding dominates the
cost of a step). The epoch's gradient is unchanged in expectation; batches are more
correlated, which ``bench/centralized.py`` measures against ``random`` for accuracy per epoch.
"""

from __future__ import annotations

import numpy as np

BATCHINGS = ("grouped", "random")


def random_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def grouped_batches(
    target: np.ndarray, batch_size: int, rng: np.random.Generator, group_size: int = 32
) -> list[np.ndarray]:
    """Batches of about ``batch_size`` pairs made of chunks of ``group_size`` same-target pairs.

    Each target's pairs are shuffled and cut into chunks of at most ``group_size``; the
    chunks of all targets are shuffled and packed into batches. Every pair appears exactly
    once per epoch; a batch touches about ``batch_size / group_size`` targets.
    """
    target = np.asarray(target)
    if target.size == 0:
        return []
    order = np.argsort(target, kind="stable")
    _, starts, counts = np.unique(target[order], return_index=True, return_counts=True)
    chunks = []
    for start, count in zip(starts, counts):
        rows = order[start + rng.permutation(count)]
        chunks.extend(rows[i : i + group_size] for i in range(0, count, group_size))
    batches, current, size = [], [], 0
    for c in rng.permutation(len(chunks)):
        current.append(chunks[c])
        size += len(chunks[c])
        if size >= batch_size:
            batches.append(np.concatenate(current))
            current, size = [], 0
    if current:
        batches.append(np.concatenate(current))
    return batches


def plan_batches(
    target: np.ndarray, batch_size: int, batching: str, rng: np.random.Generator, group_size: int = 32
) -> list[np.ndarray]:
    if batching == "grouped":
        return grouped_batches(target, batch_size, rng, group_size)
    if batching == "random":
        return random_batches(len(target), batch_size, rng)
    raise ValueError(f"Could not resolve batching {batching!r} among choices {list(BATCHINGS)}")
