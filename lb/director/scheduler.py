"""Weighted round robin as IPVS's ip_vs_wrr computes it: the one place the order is made.

The data plane only walks the sequence built here (an index shared by all CPUs), so the
order, the gcd step and weight 0 are decided in Python and tested without a kernel.
"""
from __future__ import annotations

from functools import reduce
from math import gcd
from typing import Sequence


def wrr_sequence(weights: Sequence[int]) -> list[int]:
    """One full cycle of IPVS wrr as indices into `weights`.

    IPVS starts with the current weight at the maximum and lowers it by the gcd after
    each pass over the servers, picking every server whose weight is at least the
    current weight. Weights 2,1,1 give [0, 0, 1, 2]; weight 0 never appears.
    """
    live = [w for w in weights if w > 0]
    if not live:
        return []
    step = reduce(gcd, live)
    sequence = []
    current = max(live)
    while current > 0:
        sequence.extend(i for i, w in enumerate(weights) if w >= current)
        current -= step
    return sequence


def wrr_length(weights: Sequence[int]) -> int:
    """len(wrr_sequence(weights)) without building it: each server appears weight/gcd times.

    Lets validation reject weights whose cycle would not fit before spending memory on it.
    """
    live = [w for w in weights if w > 0]
    if not live:
        return 0
    step = reduce(gcd, live)
    return sum(w // step for w in live)
