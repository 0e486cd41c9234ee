"""Closed forms of queueing theory the simulator and capacity tests check against."""

from __future__ import annotations

import math


def erlang_c(c: int, a: float) -> float:
    """P(wait > 0) in M/M/c with offered load a = λ/μ < c (log-space terms: no overflow for
    large c)."""
    from scipy.special import gammaln

    terms = [math.exp(k * math.log(a) - gammaln(k + 1)) for k in range(c)]
    last = math.exp(c * math.log(a) - gammaln(c + 1)) * c / (c - a)
    return last / (sum(terms) + last)
