"""Exact symbolic sizes: monomials over static and free symbols.

A dimension size is ``coef * C^a * H^b * W^c * x0^n0 * x1^n1 ...`` with a
rational ``coef`` and integer powers. ``C``, ``H`` and ``W`` are *static*
symbols (they come from the place a kernel is used); ``x0, x1, ...`` are
*free* sizes introduced by primitives and fixed later by the size solver.

:class:`Monomial` is an immutable value type with exact arithmetic. It is in
every inner loop of the search, so it avoids :class:`fractions.Fraction` and
SymPy: the coefficient is a normalised ``(num, den)`` pair of ints and the
powers a sorted tuple of ``(symbol_id, power)`` pairs.

>>> x0 = Monomial.symbol(free_symbol(0))
>>> m = C * x0 / 2
>>> str(m)
'C*x0/2'
>>> m.evaluate({C_ID: 64, free_symbol(0): 4})
Fraction(128, 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction
from math import gcd

__all__ = [
    "Monomial",
    "ONE",
    "C",
    "H",
    "W",
    "C_ID",
    "H_ID",
    "W_ID",
    "free_symbol",
    "PLACEHOLDER",
    "PLACEHOLDER_INDEX",
    "symbol_name",
    "parse_monomial",
]

C_ID, H_ID, W_ID = 0, 1, 2
_STATIC_NAMES = ("C", "H", "W")
_FIRST_FREE = 3


def free_symbol(index: int) -> int:
    """Return the symbol id of the free size ``x<index>``."""
    return _FIRST_FREE + index


#: A stand-in for "the next free size" in cached inferences; renamed when applied.
PLACEHOLDER_INDEX = 1_000_000
PLACEHOLDER = _FIRST_FREE + PLACEHOLDER_INDEX


def symbol_name(symbol_id: int) -> str:
    """Return the printable name of a symbol id (``C``, ``H``, ``W``, ``x0``...)."""
    if symbol_id < _FIRST_FREE:
        return _STATIC_NAMES[symbol_id]
    if symbol_id == PLACEHOLDER:
        return "x_new"
    return f"x{symbol_id - _FIRST_FREE}"


def _merge(a: tuple, b: tuple, sign: int) -> tuple:
    """Merge two sorted power tuples, adding ``sign * b`` to ``a``."""
    if not b:
        return a
    if not a and sign == 1:
        return b
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        sa, pa = a[i]
        sb, pb = b[j]
        if sa == sb:
            p = pa + sign * pb
            if p:
                out.append((sa, p))
            i += 1
            j += 1
        elif sa < sb:
            out.append(a[i])
            i += 1
        else:
            out.append((sb, sign * pb))
            j += 1
    out.extend(a[i:])
    out.extend((s, sign * p) for s, p in b[j:])
    return tuple(out)


class Monomial:
    """An exact monomial ``num/den * prod(symbol^power)``; immutable and hashable."""

    __slots__ = ("num", "den", "powers", "_hash")

    def __init__(self, num: int = 1, den: int = 1, powers: tuple = ()) -> None:
        if den <= 0 or num <= 0:
            raise ValueError(f"a size coefficient must be positive, got {num}/{den}")
        g = gcd(num, den)
        if g != 1:
            num //= g
            den //= g
        self.num = num
        self.den = den
        self.powers = powers
        self._hash = hash((num, den, powers))

    # -- construction -------------------------------------------------
    @staticmethod
    def const(value: int | Fraction) -> Monomial:
        """A constant monomial (a static size such as a kernel size ``3``)."""
        f = Fraction(value)
        return Monomial(f.numerator, f.denominator)

    @staticmethod
    def symbol(symbol_id: int, power: int = 1) -> Monomial:
        """The monomial ``symbol^power``."""
        return Monomial(1, 1, ((symbol_id, power),) if power else ())

    # -- algebra ------------------------------------------------------
    def __mul__(self, other: Monomial | int) -> Monomial:
        if isinstance(other, int):
            return Monomial(self.num * other, self.den, self.powers)
        return Monomial(self.num * other.num, self.den * other.den, _merge(self.powers, other.powers, 1))

    __rmul__ = __mul__

    def __truediv__(self, other: Monomial | int) -> Monomial:
        if isinstance(other, int):
            return Monomial(self.num, self.den * other, self.powers)
        return Monomial(self.num * other.den, self.den * other.num, _merge(self.powers, other.powers, -1))

    def __pow__(self, k: int) -> Monomial:
        if k >= 0:
            return Monomial(self.num**k, self.den**k, tuple((s, p * k) for s, p in self.powers))
        return Monomial(self.den ** (-k), self.num ** (-k), tuple((s, p * k) for s, p in self.powers))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Monomial):
            return NotImplemented
        return self._hash == other._hash and self.num == other.num and self.den == other.den and self.powers == other.powers

    def __hash__(self) -> int:
        return self._hash

    def __lt__(self, other: Monomial) -> bool:
        return self.sort_key() < other.sort_key()

    def sort_key(self) -> tuple:
        """A total order used for canonical forms."""
        return (self.powers, self.num, self.den)

    # -- queries ------------------------------------------------------
    @property
    def is_one(self) -> bool:
        """True for the size 1 (an absent axis)."""
        return not self.powers and self.num == 1 and self.den == 1

    @property
    def is_static(self) -> bool:
        """True when no free symbol appears."""
        return all(s < _FIRST_FREE for s, _ in self.powers)

    def free_symbols(self) -> tuple:
        """Ids of the free symbols that appear, in increasing order."""
        return tuple(s for s, _ in self.powers if s >= _FIRST_FREE)

    def power_of(self, symbol_id: int) -> int:
        """The power of ``symbol_id`` (0 when absent)."""
        for s, p in self.powers:
            if s == symbol_id:
                return p
        return 0

    def static_part(self) -> Monomial:
        """The monomial with every free symbol removed."""
        return Monomial(self.num, self.den, tuple((s, p) for s, p in self.powers if s < _FIRST_FREE))

    def free_part(self) -> tuple:
        """The ``(symbol_id, power)`` pairs of free symbols."""
        return tuple((s, p) for s, p in self.powers if s >= _FIRST_FREE)

    def evaluate(self, values: Mapping[int, int | Fraction]) -> Fraction:
        """Exact value given a value for every symbol that appears."""
        out = Fraction(self.num, self.den)
        for s, p in self.powers:
            out *= Fraction(values[s]) ** p
        return out

    def rename(self, mapping: Mapping[int, int]) -> Monomial:
        """Rename free symbols (static ids map to themselves)."""
        if not any(s in mapping for s, _ in self.powers):
            return self
        powers = sorted((mapping.get(s, s), p) for s, p in self.powers)
        return Monomial(self.num, self.den, tuple(powers))

    # -- printing -----------------------------------------------------
    def __str__(self) -> str:
        ups = []
        downs = []
        for s, p in self.powers:
            name = symbol_name(s)
            term = name if abs(p) == 1 else f"{name}^{abs(p)}"
            (ups if p > 0 else downs).append(term)
        if self.num != 1 or not ups:
            ups.insert(0, str(self.num))
        text = "*".join(ups)
        if self.den != 1:
            downs.insert(0, str(self.den))
        if downs:
            text += "/" + "/".join(downs)
        return text

    def __repr__(self) -> str:
        return f"Monomial({self})"

    def python_expr(self, names: Mapping[int, str]) -> str:
        """An integer-valued Python expression (``//`` for divisions)."""
        ups = []
        downs = []
        for s, p in self.powers:
            name = names[s]
            for _ in range(abs(p)):
                (ups if p > 0 else downs).append(name)
        if self.num != 1 or not ups:
            ups.insert(0, str(self.num))
        if self.den != 1:
            downs.insert(0, str(self.den))
        text = " * ".join(ups)
        if downs:
            if len(ups) > 1:
                text = f"({text})"
            text += "".join(f" // {d}" for d in downs) if len(downs) == 1 else " // (" + " * ".join(downs) + ")"
        return text


ONE = Monomial()
C = Monomial.symbol(C_ID)
H = Monomial.symbol(H_ID)
W = Monomial.symbol(W_ID)


def product(monomials: Iterable[Monomial]) -> Monomial:
    """Product of monomials (one new monomial, not one per factor: shapes' volumes are hot)."""
    num = den = 1
    powers: dict = {}
    for m in monomials:
        num *= m.num
        den *= m.den
        for s, p in m.powers:
            powers[s] = powers.get(s, 0) + p
    return Monomial(num, den, tuple(sorted((s, p) for s, p in powers.items() if p)))


def parse_monomial(text: str) -> Monomial:
    """Parse the printed form of a monomial (``'C*x0/2'``, ``'3'``, ``'H'``).

    Raises:
        ValueError: when ``text`` is not a printed monomial.
    """
    if not isinstance(text, str) or not text or len(text) > 200:
        raise ValueError(f"not a size expression: {text!r}")
    parts = text.split("/")
    out = ONE
    for i, part in enumerate(parts):
        factors = part.split("*")
        for f in factors:
            f = f.strip()
            base, _, power = f.partition("^")
            p = 1
            if power:
                if not power.isdigit():
                    raise ValueError(f"bad power in size expression {text!r}")
                p = int(power)
            if base.isdigit():
                m = Monomial.const(int(base) ** p)
            elif base in _STATIC_NAMES:
                m = Monomial.symbol(_STATIC_NAMES.index(base), p)
            elif base.startswith("x") and base[1:].isdigit():
                m = Monomial.symbol(free_symbol(int(base[1:])), p)
            else:
                raise ValueError(f"unknown symbol {base!r} in size expression {text!r}")
            if m.num == 0:
                raise ValueError(f"zero size in {text!r}")
            out = out * m if i == 0 else out / m
    return out
