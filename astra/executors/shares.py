"""How a batch's items are split into the shares of a SLURM array: each share works every n-th item, but items
linked to each other (a chain, a repeat) go to one share, where one process works them in order."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from astra.identity import Item


class SplitChangedError(RuntimeError):
    """A share of a SLURM array found other parameter sets than the luigi process split into shares."""


class Placed:
    """The hashes of a batch's items in order, and the share each goes to (see :func:`shares_of`)."""

    def __init__(self, hashes: list[str], places: list[int], shares: list[int], count: int, chained: bool) -> None:
        self.hashes = hashes
        self.shares = shares
        #: Whether items need others of the batch, or repeat one (then not every share is the place mod the shares).
        self.chained = chained
        self._by_place = dict(zip(places, shares)) if chained else {}
        self._count = count

    def share(self, place: int) -> int:
        """The share of the parameter set at ``place`` (one without an identity: its place mod the shares)."""
        return self._by_place.get(place, place % self._count)

    def split(self, sets: int, shares: Iterable[int]) -> dict:
        """What an array element checks its share against (:func:`check`): the number of parameter sets split, and a
        digest of the items of each of ``shares`` (8 hex digits a share, from the first of them to the last, in one
        string: 8 kB in an array of 1,000 elements)."""
        hashers = {share: hashlib.sha256() for share in shares}
        for task_hash, share in zip(self.hashes, self.shares):
            hasher = hashers.get(share)
            if hasher is not None:
                hasher.update(task_hash.encode())
        first = min(hashers, default=0)
        digests = [
            _digest(hashers[share]) if share in hashers else "-" * DIGEST
            for share in range(first, max(hashers, default=-1) + 1)
        ]
        return {"sets": sets, "first": first, "digests": "".join(digests)}


def check(split: dict, share: tuple[int, int], sets: int, hashes: Iterable[str]) -> None:
    """Raise :class:`SplitChangedError` unless the ``sets`` parameter sets a share found (of the first
    ``split["sets"]``) and the hashes of its items in order are those the luigi process split (:meth:`Placed.split`).
    """
    hasher = hashlib.sha256()
    for task_hash in hashes:
        hasher.update(task_hash.encode())
    at = DIGEST * (share[0] - split["first"])
    if sets == split["sets"] and at >= 0 and _digest(hasher) == split["digests"][at : at + DIGEST]:
        return
    counts = f"{split['sets']} sets then, {sets} now" if sets != split["sets"] else f"{sets} sets, other items"
    raise SplitChangedError(
        f"astra: share {share[0]} of {share[1]}: the batch's parameter sets are not those the luigi process split "
        f"into shares ({counts}): parameter_sets() must give the same sets, in the same order, each time it is "
        "called (sets added at the end are left to the next run); this share worked nothing: run the batch again"
    )


#: Hex digits of a share's digest in a split (:meth:`Placed.split`).
DIGEST = 8


def _digest(hasher: hashlib._Hash) -> str:
    return hasher.hexdigest()[:DIGEST]


def shares_of(numbered: Iterable[tuple[int, Item]], shares: int) -> Placed:
    """Where each item goes among ``shares`` shares of the items (the elements of a SLURM array): the item at
    place k to share k mod ``shares``, unless it needs another item of the batch, or another needs it (a chain, each
    night needing the one before), or it is given twice: all the items so linked go to the share of the first of
    them, where one process works them in order, records each after those it needs, and works a repeat once. Each
    share of a SLURM array works this out again from the same parameter sets."""
    import numpy as np

    # Keys are the first 64 bits of the hashes, held as numbers (8 bytes each, for a million items): two that
    # happen to share them would only put two items in one share.
    hashes: list[str] = []
    places, own, needer, needed = array("q"), array("Q"), array("q"), array("Q")
    for place, item in numbered:
        for key in item.requires:
            needer.append(len(hashes))
            needed.append(int(key[:16], 16))
        hashes.append(item.task_hash)
        places.append(place)
        own.append(int(item.task_hash[:16], 16))
    keys = np.frombuffer(own, dtype=np.uint64) if own else np.zeros(0, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    wanted = np.frombuffer(needed, dtype=np.uint64) if needed else np.zeros(0, dtype=np.uint64)
    found = np.searchsorted(keys[order], wanted)
    inside = found < len(keys)
    inside[inside] = keys[order[found[inside]]] == wanted[inside]
    links = list(zip(np.frombuffer(needer, dtype=np.int64)[inside].tolist() if needer else [],
                     order[found[inside]].tolist()))  # fmt: skip
    # A parameter set given twice (one task) goes to one share too, which then works it once.
    twice = np.nonzero(keys[order][1:] == keys[order][:-1])[0]
    links += zip(order[twice].tolist(), order[twice + 1].tolist())
    if not links:
        return Placed(hashes, [], [place % shares for place in places], shares, False)
    first = list(range(len(hashes)))  # of each item, an earlier item linked to it (itself if none): a forest

    def root(at: int) -> int:
        while first[at] != at:
            first[at] = first[first[at]]
            at = first[at]
        return at

    chained = False
    for at, other in links:
        low, high = sorted((root(at), root(other)))
        if low != high:
            first[high] = low
            chained = True
    placed = [places[root(at)] % shares for at in range(len(hashes))]
    return Placed(hashes, list(places), placed, shares, chained)
