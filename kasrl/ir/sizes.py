"""Solved free sizes: each free size is tied to C by a power-of-two ratio or is
a power-of-two constant, the same at every placement (as in Canvas).

>>> SizeChoice(ratio=True, exp=-2).value(64)
16
>>> str(SizeChoice(ratio=False, exp=3))
'8'
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import NamedTuple

from kasrl.ir.dims import C_ID, H_ID, W_ID, Monomial

__all__ = ["SizeChoice", "symbol_values", "evaluate"]


class SizeChoice(NamedTuple):
    """One free size: ``C * 2**exp`` when ``ratio`` else ``2**exp``."""

    ratio: bool
    exp: int

    def exact_value(self, c: int) -> Fraction:
        """The value at channel count ``c`` (may be fractional if illegal)."""
        base = Fraction(c) if self.ratio else Fraction(1)
        return base * Fraction(2) ** self.exp

    def value(self, c: int) -> int:
        """The integer value at channel count ``c``.

        Raises:
            ValueError: when the size is not a positive integer at ``c``.
        """
        v = self.exact_value(c)
        if v.denominator != 1 or v < 1:
            raise ValueError(f"size {self} is not a positive integer at C={c}")
        return int(v)

    def __str__(self) -> str:
        if not self.ratio:
            return str(2**self.exp)
        if self.exp == 0:
            return "C"
        return f"C*{2**self.exp}" if self.exp > 0 else f"C/{2**-self.exp}"

    def python_expr(self, c: str = "c") -> str:
        """An int expression of the channel count named ``c``."""
        if not self.ratio:
            return str(2**self.exp)
        if self.exp == 0:
            return c
        return f"{c} * {2**self.exp}" if self.exp > 0 else f"{c} // {2**-self.exp}"


def symbol_values(sizes: Mapping[int, SizeChoice], c: int, h: int, w: int) -> dict:
    """Symbol id -> exact value at placement ``(c, h, w)``."""
    out = {C_ID: Fraction(c), H_ID: Fraction(h), W_ID: Fraction(w)}
    for sym, choice in sizes.items():
        out[sym] = choice.exact_value(c)
    return out


def evaluate(m: Monomial, sizes: Mapping[int, SizeChoice], c: int, h: int, w: int) -> Fraction:
    """Exact value of a monomial at a placement under solved sizes."""
    return m.evaluate(symbol_values(sizes, c, h, w))
