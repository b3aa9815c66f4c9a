"""Evolving kernels with DEAP: action-sequence genomes, variation that keeps kernels legal, three algorithms.

``genome``      decode an action sequence through the search space, repairing illegal steps
``operators``   ``mut_*``, ``cx_*`` and ``sel_*`` on genomes, with a seeded ``random.Random``
``algorithms``  aging evolution, (mu + lambda) and NSGA-II as ask/tell strategies (the registry names them)
``report``      the Pareto front's kernels, table and scatter
"""

from evolution.algorithms import ALGORITHMS, NSGA2, AgingEvolution, EvolutionOptions, EvolutionStrategy, MuPlusLambda
from evolution.genome import Decoded, FitnessMax, FitnessPareto, Individual, choose_legal, decode
from evolution.operators import (
    cx_one_point,
    cx_two_point,
    mut_change_step,
    mut_delete_step,
    mut_insert_step,
    mut_step,
    sel_tournament,
    sel_tournament_dcd,
)
from evolution.report import front_rows, non_dominated, plot_pareto, print_front, write_front

__all__ = [
    "ALGORITHMS",
    "AgingEvolution",
    "Decoded",
    "EvolutionOptions",
    "EvolutionStrategy",
    "FitnessMax",
    "FitnessPareto",
    "Individual",
    "MuPlusLambda",
    "NSGA2",
    "choose_legal",
    "cx_one_point",
    "cx_two_point",
    "decode",
    "front_rows",
    "mut_change_step",
    "mut_delete_step",
    "mut_insert_step",
    "mut_step",
    "non_dominated",
    "plot_pareto",
    "print_front",
    "sel_tournament",
    "sel_tournament_dcd",
    "write_front",
]
