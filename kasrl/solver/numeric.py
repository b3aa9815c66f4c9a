"""Exact numeric checks of size constraints under a candidate assignment.

The completability oracle calls these in its inner loop, so a monomial is
compiled once per placement into ``(num, den, c)`` and the free part, and a
value is computed with Python ints: ``num * c**A * 2**L / den`` where
``A = sum(power * ratio)`` and ``L = sum(power * exp)`` over its free sizes.

An *assignment* maps a free symbol id to ``(ratio, exp)`` (see
:class:`kasrl.ir.sizes.SizeChoice`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from math import lcm

from kasrl.ir.dims import C_ID, H_ID, W_ID, Monomial
from kasrl.solver.budget import Limits, Placement

__all__ = ["NumericModel"]


class NumericModel:
    """Evaluates monomials at a fixed list of placements with exact integers."""

    def __init__(self, placements: Sequence[Placement], limits: Sequence[Limits]) -> None:
        self.placements = tuple(placements)
        self.limits = tuple(limits)
        self._compiled: dict = {}
        self._compiled_f: dict = {}
        self._compiled_poly: dict = {}
        self._c_float = tuple(float(p.c) for p in self.placements)

    _shared: dict = {}

    @classmethod
    def shared(cls, placements: Sequence[Placement], limits: Sequence[Limits] = ()) -> NumericModel:
        """One model per (placements, limits), so compiled monomials are reused
        across callers and calls (the limits only matter to :meth:`volume_ok`)."""
        key = (tuple(placements), tuple(limits))
        hit = cls._shared.get(key)
        if hit is None:
            if len(cls._shared) > 64:
                cls._shared.clear()
            hit = cls._shared[key] = cls(*key)
        return hit

    def compile(self, m: Monomial) -> tuple:
        """``(free_part, ((num, den, c), ...))`` for monomial ``m``."""
        hit = self._compiled.get(m)
        if hit is not None:
            return hit
        static = m.static_part()
        per_p = []
        for p in self.placements:
            v = static.evaluate({C_ID: p.c, H_ID: p.h, W_ID: p.w})
            per_p.append((v.numerator, v.denominator, p.c))
        hit = (m.free_part(), tuple(per_p))
        self._compiled[m] = hit
        return hit

    @staticmethod
    def _exponents(free: tuple, w: Mapping) -> tuple:
        a = 0
        e = 0
        for s, n in free:
            t, x = w[s]
            if t:
                a += n
            e += n * x
        return a, e

    @staticmethod
    def _frac(num: int, den: int, c: int, a: int, e: int) -> tuple:
        if a > 0:
            num *= c**a
        elif a < 0:
            den *= c ** (-a)
        if e > 0:
            num <<= e
        elif e < 0:
            den <<= -e
        return num, den

    def values(self, m: Monomial, w: Mapping) -> list:
        """``[(numerator, denominator), ...]`` of ``m`` at each placement."""
        free, per_p = self.compile(m)
        a, e = self._exponents(free, w)
        return [self._frac(num, den, c, a, e) for num, den, c in per_p]

    def integral(self, m: Monomial, w: Mapping) -> bool:
        """True when ``m`` is a positive integer at every placement."""
        return all(n % d == 0 for n, d in self.values(m, w))

    def equal_one(self, m: Monomial, w: Mapping) -> bool:
        """True when ``m`` equals 1 at every placement."""
        return all(n == d for n, d in self.values(m, w))

    def volume_ok(self, m: Monomial, w: Mapping) -> bool:
        """True when ``m`` is within the tensor cap at every placement."""
        return all(n <= lim.volume * d for (n, d), lim in zip(self.values(m, w), self.limits, strict=False))

    def compile_float(self, m: Monomial) -> tuple:
        """``(free_part, ((K_p, c_p), ...))`` with float static parts."""
        hit = self._compiled_f.get(m)
        if hit is None:
            free, per_p = self.compile(m)
            hit = (free, tuple((num / den, float(c)) for num, den, c in per_p))
            self._compiled_f[m] = hit
        return hit

    def compile_poly(self, terms: Sequence[Monomial]) -> tuple:
        """``((free_part, (K_p, ...)), ...)``: a sum of monomials with the terms of each
        free part summed (float static parts; cached per tuple of terms). The
        latency model's polynomials repeat free parts (a node's call, FLOPs and
        bytes), so this evaluates several times fewer terms."""
        key = terms if isinstance(terms, tuple) else tuple(terms)
        hit = self._compiled_poly.get(key)
        if hit is None:
            groups: dict = {}
            for m in key:
                free, per_p = self.compile_float(m)
                acc = groups.get(free)
                if acc is None:
                    groups[free] = [k for k, _ in per_p]
                else:
                    for i, (k, _) in enumerate(per_p):
                        acc[i] += k
            hit = tuple((free, tuple(ks)) for free, ks in groups.items())
            if len(self._compiled_poly) > 200_000:
                self._compiled_poly.clear()
            self._compiled_poly[key] = hit
        return hit

    def poly_float(self, terms: Sequence[Monomial], w: Mapping) -> list:
        """Float value of a sum of monomials at each placement (fast; see :meth:`poly`)."""
        return self.compiled_float(self.compile_poly(terms), w)

    def compiled_float(self, groups: tuple, w: Mapping) -> list:
        """:meth:`poly_float` of what :meth:`compile_poly` returned (for loops over assignments)."""
        cs = self._c_float
        out = [0.0] * len(cs)
        for free, ks in groups:
            a, e = self._exponents(free, w)
            two = 2.0**e
            for i, k in enumerate(ks):
                out[i] += k * cs[i] ** a * two
        return out

    def poly(self, terms: Iterable[Monomial], w: Mapping) -> list:
        """Exact value of a sum of monomials at each placement (Fractions).

        Summed as integers over a common denominator (one Fraction per placement,
        not one per term: this runs once per finished kernel and per placement)."""
        nums = [0] * len(self.placements)
        dens = [1] * len(self.placements)
        for m in terms:
            for i, (n, d) in enumerate(self.values(m, w)):
                den = dens[i]
                if d == den:
                    nums[i] += n
                else:
                    common = lcm(den, d)
                    nums[i] = nums[i] * (common // den) + n * (common // d)
                    dens[i] = common
        return [Fraction(n, d) for n, d in zip(nums, dens, strict=False)]

    def min_value(self, m: Monomial, bounds: Mapping) -> list:
        """A lower bound (float) of ``m`` at each placement over independent symbol ranges.

        ``bounds`` maps a symbol to ``(lowest values, highest values)`` per
        placement. Used as a cheap necessary condition before CP-SAT.
        """
        free, per_p = self.compile_float(m)
        out = []
        for i, (k, _) in enumerate(per_p):
            v = k
            for s, n in free:
                lo, hi = bounds[s]
                v *= (lo[i] if n > 0 else hi[i]) ** n
            out.append(v)
        return out
