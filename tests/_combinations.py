"""A pairwise covering set of option combinations for tests/test_combinations.py.

Each factor is an option with its levels: level 0 is "off" (no flag), the others are command-line
flags. A row turns on one level per factor. The rows cover every pair of "on" levels of two
different factors at least once (so each pair of options is trained together somewhere), while a
pair that main.py refuses is never put in a row (it is tested on its own: refused at once).
Greedy (AETG-like): each new row starts from the uncovered pair that is hardest to place and
adds, factor by factor, the level that covers most uncovered pairs with the levels already
chosen; deterministic for a given seed.
"""

from __future__ import annotations

import itertools
import random

Level = tuple[str, ...]


def pairs_to_cover(
    factors: dict[str, list[Level]], refused: set[frozenset]
) -> set[frozenset]:
    """Every pair {(factor a, level i), (factor b, level j)} of two "on" levels (i, j >= 1) of
    two different factors, except the refused ones."""
    on = [(f, i) for f, levels in factors.items() for i in range(1, len(levels))]
    return {
        frozenset((a, b))
        for a, b in itertools.combinations(on, 2)
        if a[0] != b[0] and frozenset((a, b)) not in refused
    }


def covering_rows(
    factors: dict[str, list[Level]], refused: set[frozenset], seed: int = 0
) -> list[dict[str, int]]:
    """Rows `{factor: level index}` that cover `pairs_to_cover(factors, refused)`."""
    rng = random.Random(seed)
    uncovered = pairs_to_cover(factors, refused)
    rows = []
    while uncovered:
        first = sorted(uncovered, key=lambda p: sorted(p))[rng.randrange(len(uncovered))]
        row = dict(first)
        names = [f for f in factors if f not in row]
        rng.shuffle(names)
        for name in names:
            best, gain = 0, 0
            for level in range(1, len(factors[name])):
                pick = (name, level)
                if any(frozenset((pick, c)) in refused for c in row.items()):
                    continue
                new = sum(frozenset((pick, c)) in uncovered for c in row.items())
                if new > gain:
                    best, gain = level, new
            row[name] = best
        for a, b in itertools.combinations(row.items(), 2):
            uncovered.discard(frozenset((a, b)))
        rows.append({f: row[f] for f in factors})
    return rows


def row_flags(factors: dict[str, list[Level]], row: dict[str, int]) -> list[str]:
    """The command-line flags of a row."""
    return [flag for name, level in row.items() for flag in factors[name][level]]


def on(row: dict[str, int]) -> set[str]:
    """The factors a row turns on."""
    return {name for name, level in row.items() if level}
