"""Layer 1: the WRR sequence against IPVS's order."""
from __future__ import annotations

import random
from functools import reduce
from math import gcd

import pytest

from lb.director.scheduler import wrr_length, wrr_sequence


@pytest.mark.parametrize("weights, expected", [
    pytest.param([2, 1, 1], [0, 0, 1, 2], id="seed-2-1-1"),
    pytest.param([4, 3, 2], [0, 0, 1, 0, 1, 2, 0, 1, 2], id="ipvs-4-3-2"),
    pytest.param([4, 2], [0, 0, 1], id="gcd-2"),
    pytest.param([6, 3, 3], [0, 0, 1, 2], id="gcd-3-like-2-1-1"),
    pytest.param([1, 1, 1], [0, 1, 2], id="equal"),
    pytest.param([5], [0], id="one-server"),
    pytest.param([2, 0, 1], [0, 0, 2], id="weight-0-left-out"),
    pytest.param([0, 3], [1], id="only-one-live"),
    pytest.param([1, 2], [1, 0, 1], id="heaviest-second"),
    pytest.param([0, 0, 0], [], id="all-zero"),
    pytest.param([], [], id="no-server"),
])
def test_wrr_sequence(weights, expected):
    assert wrr_sequence(weights) == expected, f"wrong IPVS wrr order for weights {weights}"


def test_wrr_sequence_gives_each_server_its_share():
    weights = [5, 0, 3, 2, 7]
    seq = wrr_sequence(weights)
    g = reduce(gcd, [w for w in weights if w])
    assert [seq.count(i) for i in range(len(weights))] == [w // g for w in weights]


# --- the kernel's loop, transcribed from net/netfilter/ipvs/ip_vs_wrr.c ------------------

HEAD = -1   # &svc->destinations: the list head, before the first server


class IpvsWrr:
    """ip_vs_wrr_init_svc + ip_vs_wrr_schedule on a fixed list of destinations.

    `mark` is kept as in the kernel: cl (the last chosen dest, or the head), cw (current
    weight), mw (max weight less gcd - 1) and di (the gcd, the step). No dest is overloaded.
    """

    def __init__(self, weights: list[int]):
        self.weights = list(weights)
        positive = [w for w in weights if w > 0]
        self.di = reduce(gcd, positive) if positive else 1   # ip_vs_wrr_gcd_weight
        self.mw = max(weights, default=0) - (self.di - 1)     # ip_vs_wrr_max_weight - (di - 1)
        self.cw = self.mw
        self.cl = HEAD

    def schedule(self) -> int | None:
        if self.mw == 0:
            return None                                        # err_noavail
        dest = last = self.cl
        stop = None
        last_pass = restarted = False
        while True:
            # list_for_each_entry_continue_rcu: the dests after `dest`, up to the head
            for i in range(dest + 1, len(self.weights)):
                if self.weights[i] >= self.cw:
                    self.cl = i                                # found
                    return i
                if i == stop:
                    return None                                # err_over
            dest = HEAD
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                if last_pass or last == HEAD:
                    return None                                # err_over
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != HEAD:
                stop = last


def kernel_picks(weights: list[int], n: int) -> list[int | None]:
    wrr = IpvsWrr(weights)
    return [wrr.schedule() for _ in range(n)]


def test_the_kernel_model_itself_gives_the_known_orders():
    # Guards the reference: if it were wrong, the property test would prove nothing.
    assert kernel_picks([2, 1, 1], 8) == [0, 0, 1, 2] * 2
    assert kernel_picks([4, 3, 2], 9) == [0, 0, 1, 0, 1, 2, 0, 1, 2]
    assert kernel_picks([0, 0], 3) == [None] * 3


def random_weights(rng: random.Random) -> list[int]:
    n = rng.randint(1, 8)
    shape = rng.choice(["small", "wide", "common-factor", "with-zeros", "equal"])
    if shape == "small":
        return [rng.randint(1, 5) for _ in range(n)]
    if shape == "wide":
        return [rng.randint(1, 60) for _ in range(n)]
    if shape == "common-factor":
        k = rng.choice([2, 3, 4, 10, 100])
        return [k * rng.randint(1, 6) for _ in range(n)]
    if shape == "with-zeros":
        return [rng.choice([0, 0, 1, 2, 3, 8]) for _ in range(n)]
    return [rng.randint(1, 9)] * n


def test_wrr_sequence_matches_the_kernel_on_random_weights():
    rng = random.Random(20240521)
    for _ in range(1000):
        weights = random_weights(rng)
        seq = wrr_sequence(weights)
        if not seq:
            assert all(w == 0 for w in weights), f"empty sequence for {weights}"
            assert kernel_picks(weights, 3) == [None] * 3
            continue
        # Three cycles: the kernel starts each cycle afresh, as the data plane's index does.
        picks = kernel_picks(weights, 3 * len(seq))
        assert picks == seq * 3, (f"weights {weights}: dr-lb's cycle {seq} differs from "
                                  f"the kernel's picks {picks[:len(seq)]}")


def test_wrr_length_is_the_length_of_the_sequence():
    rng = random.Random(7)
    for weights in [[], [0], [2, 1, 1], [4, 3, 2], [4, 2], [65535, 1]] + \
            [random_weights(rng) for _ in range(200)]:
        assert wrr_length(weights) == len(wrr_sequence(weights)), f"weights {weights}"
