"""Evolutionary search strategies on action-sequence genomes, and the loop that runs them.

Three algorithms, all :class:`~kasrl.strategy.Strategy` subclasses (ask/tell,
``state_dict``), registered as ``aging``, ``mu_plus_lambda`` and ``nsga2``
(``configs/strategies/*.yaml``):

* ``aging``: regularised (aging) evolution (Real et al. 2019, arXiv 1802.01548).
* ``mu_plus_lambda``: a (mu + lambda) genetic algorithm (DEAP ``eaMuPlusLambda``).
* ``nsga2``: NSGA-II on the two objectives (Deb et al. 2002; DEAP ``selNSGA2``).

One generation is one round of the study's loop (:meth:`kasrl.study.Study.optimize`;
DEAP's ``eaMuPlusLambda`` shape)::

    population <- `population` kernels from the random start, evaluated as one round   # generation 0
    while evaluations and seconds remain (and generation <= `generations` if set):
        offspring <- strategy.ask_many(`offspring`)             # varied, decoded, novel kernels
        results   <- evaluate_many(offspring)                   # `workers` at a time
        strategy.tell(child, result) for each                   # survivor selection inside
        strategy.after_round(): logbook.record(statistics of the population), logged against evaluations done

How each algorithm breeds and selects (``ask`` / ``tell``)::

    aging:           parent = best of `sample` drawn from the FIFO population; child = mutate(parent)
                     append child; remove the OLDEST individual (not the worst)
    mu_plus_lambda:  parents by tournament (`tournament`); crossover with p=`cxpb` (then mutation
                     with p=`mutpb`), else mutation; after `offspring` children:
                     population = selBest(population + children, `population`)
    nsga2:           parents by binary tournament on dominance/crowding; same variation;
                     population = selNSGA2(population + children, `population`)

Every child is varied (no unevaluated copies), and a child whose kernel this run has
already asked about is bred again (up to `novelty_tries` times), since a repeated kernel
still costs one evaluation of the budget.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import numpy as np
from deap import base, tools

from agents.random_sampler import RandomSampler
from evolution.genome import FitnessMax, FitnessPareto, Individual
from evolution.operators import cx_one_point, cx_two_point, mut_step, sel_tournament, sel_tournament_dcd
from evolution.report import generation_metrics
from kasrl.errors import ConfigError, KasrlError
from kasrl.eval.base import EvalResult
from kasrl.ir.canonical import kernel_hash
from kasrl.ir.serialize import dumps, loads
from kasrl.strategy import BestTracker, Proposal, Strategy, StrategyContext

__all__ = [
    "ALGORITHMS",
    "EvolutionOptions",
    "EvolutionStrategy",
    "AgingEvolution",
    "MuPlusLambda",
    "NSGA2",
]


@dataclass
class EvolutionOptions:
    """Population sizes and variation rates (see the module docstring for where each is used)."""

    population: int = 12
    """Individuals kept (kernels): aging's FIFO size, mu of mu_plus_lambda and nsga2; also the random start."""
    offspring: int = 6
    """Children per generation (kernels; lambda), evaluated as one batch."""
    sample: int = 4
    """aging: individuals drawn per tournament (Real et al.'s S); the best of them is mutated."""
    tournament: int = 3
    """mu_plus_lambda: tournament size of parent selection (individuals)."""
    cxpb: float = 0.5
    """mu_plus_lambda, nsga2: probability that a child comes from crossover (else from mutation)."""
    mutpb: float = 0.5
    """mu_plus_lambda, nsga2: probability that a crossover child is also mutated."""
    crossover: str = "two_point"
    """one_point | two_point: the crossover operator."""
    generations: int = 0
    """Generations bred after the random start before stopping (0: only the budget stops the run)."""
    family_first: bool = True
    """Random draws (mutation, repair; the start with ``start: family``) pick a primitive family first, then one of its actions."""
    start: str = "prior"
    """Where the random start comes from: prior (the untrained PPO policy: the matched baseline ``random_prior``) |
    family (``random_family``'s draws) | uniform (``random``'s draws)."""
    ppo: dict[str, Any] = field(default_factory=dict)
    """With ``start: prior``: the PPO options whose untrained policy is the prior (as ``random_prior``'s ``ppo``)."""
    novelty_tries: int = 8
    """Times a child is bred again when its kernel was already asked about (each repeat costs an evaluation)."""

    def validate(self) -> None:
        """Check values that types alone do not catch.

        Raises:
            ConfigError: naming the key.
        """
        e = self
        checks = [
            ("population", e.population >= 2, "at least 2"),
            ("offspring", e.offspring >= 1, "at least 1"),
            ("sample", 1 <= e.sample <= e.population, f"between 1 and evolution.population ({e.population})"),
            ("tournament", 1 <= e.tournament <= e.population, f"between 1 and evolution.population ({e.population})"),
            ("cxpb", 0.0 <= e.cxpb <= 1.0, "a probability in [0, 1]"),
            ("mutpb", 0.0 <= e.mutpb <= 1.0, "a probability in [0, 1]"),
            ("crossover", e.crossover in ("one_point", "two_point"), "'one_point' or 'two_point'"),
            ("generations", e.generations >= 0, "at least 0 (0: no cap)"),
            ("novelty_tries", e.novelty_tries >= 1, "at least 1"),
            ("start", e.start in ("prior", "family", "uniform"), "'prior', 'family' or 'uniform'"),
        ]
        for key, ok, want in checks:
            if not ok:
                raise ConfigError(f"`options.{key}` must be {want}, got {getattr(e, key)!r}")


ALGORITHMS = ("aging", "mu_plus_lambda", "nsga2")


def _same_kernel(a: Individual, b: Individual) -> bool:
    return a.hash == b.hash


class EvolutionStrategy(Strategy):
    """What the three algorithms share.

    ``ask()`` a decoded, novel child (or a random kernel while the start population fills);
    ``tell(proposal, result)`` sets its fitness and hands it to :meth:`_accept` (the
    algorithm's survivor rule); ``record_generation(evaluations, nevals)`` adds a Logbook
    record; ``batch_size()`` says how many children make the next generation;
    ``population`` is the current population; ``hall_of_fame`` (by reward) and
    ``pareto_front`` (by the two objectives) cover every successful evaluation.

    Args:
        context: the search space (shared with the environment), the seed of the one
            ``random.Random`` all operators draw from, the objectives' names (for the
            statistics), the size of the hall of fame and the run's log.
        options: population sizes and variation rates.
    """

    fitness_class: type = FitnessMax
    Options = EvolutionOptions

    def __init__(self, context: StrategyContext, options: EvolutionOptions | None = None) -> None:
        super().__init__(context, options)
        options, space, seed = self.options, self.space, self.seed
        self.objectives = tuple(context.objectives)
        self.rng = random.Random(seed)
        self.sampler = RandomSampler.from_space(space, seed, family_first=options.family_first if options.start != "uniform" else False)
        self.sampler.rng = self.rng  # one RNG stream for everything: one state to checkpoint
        self.prior = None
        if options.start == "prior":  # the matched baseline's draws: the same kernels random_prior draws first
            from agents.prior import PriorOptions, PriorSampler

            self.prior = PriorSampler(context, PriorOptions(ppo=dict(options.ppo)))
        tb = base.Toolbox()
        tb.register("clone", Individual.clone)
        tb.register("mutate", mut_step, space=space, rng=self.rng, family_first=options.family_first)
        mate = cx_one_point if options.crossover == "one_point" else cx_two_point
        tb.register("mate", mate, space=space, rng=self.rng, family_first=options.family_first)
        tb.register("phenotype", attrgetter("kernel"))
        self.toolbox = tb
        self.hall_of_fame = tools.HallOfFame(context.top_k, similar=_same_kernel)
        self.pareto_front = tools.ParetoFront(similar=_same_kernel)
        stats = {"reward": tools.Statistics(attrgetter("reward"))}
        for i, name in enumerate(self.objectives):
            stats[name] = tools.Statistics(lambda ind, i=i: ind.objectives[i])
        self.stats = tools.MultiStatistics(**stats)
        for fn in ("mean", "std", "min", "max"):
            self.stats.register(fn, getattr(np, fn))
        self.logbook = tools.Logbook()
        self.logbook.header = ["gen", "evals", "nevals", "best", "front", "repairs", *stats]
        for name in stats:
            self.logbook.chapters[name].header = ["min", "mean", "max"]
        self.best = BestTracker()
        self.seen: set = set()
        self.n_asked = 0
        self.n_told = 0
        self.generation = 0
        self._batch: list = []

    # -- breeding --------------------------------------------------------------------
    def _random(self) -> Individual:
        sampler = self.prior if self.prior is not None and self._in_start() else self.sampler
        kernel, actions = sampler.sample_actions()
        ind = Individual(actions, self.fitness_class)
        ind.kernel, ind.origin = kernel, "random"
        return ind

    def _breed(self) -> Individual:
        """One child from the current population (the algorithm's variation)."""
        raise NotImplementedError

    def _in_start(self) -> bool:
        return self.n_asked < self.options.population or not self.population

    def _novel(self, make) -> Individual:
        """``make()`` until its kernel is new to this run (at most ``novelty_tries`` times)."""
        ind = None
        for _ in range(self.options.novelty_tries):
            try:
                ind = make()
            except KasrlError:  # CP-SAT ran out of time on a child: breed another
                continue
            ind.hash = kernel_hash(ind.kernel)
            if ind.hash not in self.seen:
                break
        if ind is None:
            ind = self._random()
            ind.hash = kernel_hash(ind.kernel)
        return ind

    def ask(self) -> Proposal:
        """A finished, solved kernel: random during the start, else a child of the population."""
        ind = self._novel(self._random if self._in_start() else self._breed)
        ind.uid = self.n_asked
        self.n_asked += 1
        self.seen.add(ind.hash)
        return Proposal(ind.kernel, tuple(ind), {"individual": ind, "uid": ind.uid, "origin": ind.origin, "repairs": ind.repairs})

    def tell(self, proposal: Proposal, result: EvalResult) -> None:
        """Score the child and pass it to the survivor rule."""
        ind = proposal.meta["individual"]
        ind.reward, ind.objectives, ind.ok = float(result.reward), tuple(float(v) for v in result.objectives), result.status.is_ok()
        ind.fitness.values = (ind.reward,) if self.fitness_class is FitnessMax else ind.objectives
        self.n_told += 1
        self.best.update(result)
        self._batch.append(ind)
        ranked = ind.clone()
        ranked.fitness = FitnessMax((ind.reward,))
        self.hall_of_fame.update([ranked])
        if ind.ok:
            scored = ind.clone()
            scored.fitness = FitnessPareto(ind.objectives)
            self.pareto_front.update([scored])
        self._accept(ind)

    def _accept(self, ind: Individual) -> None:
        raise NotImplementedError

    @property
    def population(self) -> list:
        """The current population (evaluated individuals)."""
        raise NotImplementedError

    def batch_size(self) -> int:
        """Children that make the next generation (the rest of the start population first)."""
        if self.n_asked < self.options.population:
            return self.options.population - self.n_asked
        return self.options.offspring

    def ask_many(self, n: int) -> list:
        """The next generation's children (none once ``generations`` after the start are done)."""
        cap = self.options.generations
        if cap and self.generation > cap:
            return []
        return [self.ask() for _ in range(n)]

    def after_round(self, evaluations: int) -> None:
        """Close the generation: a Logbook record of the population, logged against ``evaluations``."""
        record = self.record_generation(evaluations, len(self._batch))
        self.context.log(generation_metrics(record, self.objectives), evaluations)

    def record_generation(self, evaluations: int, nevals: int) -> dict:
        """Add a Logbook record for the generation just told; returns it."""
        batch, self._batch = self._batch, []
        pop = [ind for ind in self.population if ind.objectives is not None]
        stats = self.stats.compile(pop) if pop else {}
        repairs = float(np.mean([ind.repairs for ind in batch])) if batch else 0.0
        self.logbook.record(gen=self.generation, evals=evaluations, nevals=nevals, front=len(self.pareto_front), repairs=repairs,
                            best=self.best.best_reward, **stats)
        self.generation += 1
        return self.logbook[-1] | {name: self.logbook.chapters[name][-1] for name in stats}

    # -- state -----------------------------------------------------------------------
    def _entries(self, hof) -> list:
        return [(ind.to_dict(), list(ind.fitness.values), dumps(ind.kernel) if ind.kernel is not None else None) for ind in hof]

    def _restore(self, hof, entries: list, fitness_class: type) -> None:
        hof.clear()
        for d, values, doc in entries:
            ind = Individual.from_dict(d, fitness_class)
            ind.fitness.values = tuple(values)
            ind.kernel = loads(doc, "checkpoint") if doc is not None else None
            hof.insert(ind)

    def state_dict(self) -> dict:
        """Everything needed to continue identically (pickle-able; kernels of the population are not kept)."""
        return {"algorithm": self.name, "seed": self.seed, "rng": self.rng.getstate(), "n_asked": self.n_asked, "n_told": self.n_told,
                "prior": self.prior.state_dict() if self.prior is not None else None,
                "generation": self.generation, "seen": sorted(self.seen), "best": self.best.state_dict(),
                "hall_of_fame": self._entries(self.hall_of_fame), "pareto_front": self._entries(self.pareto_front),
                "logbook": [dict(r) for r in self.logbook],
                "chapters": {k: [dict(r) for r in v] for k, v in self.logbook.chapters.items()},
                "population": self._population_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ConfigError: when the checkpoint was made by another algorithm.
        """
        if state.get("algorithm") != self.name:
            raise ConfigError(f"`strategy` is {self.name!r} but the checkpoint was written by {state.get('algorithm')!r}")
        rng = state["rng"]
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))  # a tuple again after a JSON round trip
        self.n_asked, self.n_told, self.generation = state["n_asked"], state["n_told"], state["generation"]
        if self.prior is not None and state.get("prior") is not None:
            self.prior.load_state_dict(state["prior"])
        self.seen = set(state["seen"])
        self.best.load_state_dict(state["best"])
        self._restore(self.hall_of_fame, state["hall_of_fame"], FitnessMax)
        self._restore(self.pareto_front, state["pareto_front"], FitnessPareto)
        del self.logbook[:]
        self.logbook.extend(state["logbook"])
        for k, rows in state["chapters"].items():
            del self.logbook.chapters[k][:]
            self.logbook.chapters[k].extend(rows)
        self._load_population(state["population"])

    def _population_state(self) -> dict:
        raise NotImplementedError

    def _load_population(self, state: dict) -> None:
        raise NotImplementedError


class AgingEvolution(EvolutionStrategy):
    """Regularised (aging) evolution: remove the oldest, whatever its fitness.

    Real et al., "Regularized Evolution for Image Classifier Architecture Search"
    (arXiv 1802.01548): a FIFO population; each child mutates the best of ``sample``
    individuals drawn at random; the OLDEST individual is removed, so a lucky kernel
    cannot dominate forever.

    ``removed`` holds the uids of the individuals removed so far (oldest first).
    """

    name = "aging"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queue: deque = deque()
        self.removed: list = []

    @property
    def population(self) -> list:
        """The FIFO population, oldest first."""
        return list(self.queue)

    def _breed(self) -> Individual:
        parent = sel_tournament(self.queue, 1, self.options.sample, self.rng)[0]
        (child,) = self.toolbox.mutate(self.toolbox.clone(parent))
        return child

    def _accept(self, ind: Individual) -> None:
        self.queue.append(ind)
        while len(self.queue) > self.options.population:
            self.removed.append(self.queue.popleft().uid)  # the oldest, not the worst

    def _population_state(self) -> dict:
        return {"queue": [ind.to_dict() for ind in self.queue], "removed": list(self.removed)}

    def _load_population(self, state: dict) -> None:
        self.queue = deque(Individual.from_dict(d, self.fitness_class) for d in state["queue"])
        self.removed = list(state["removed"])


class _Generational(EvolutionStrategy):
    """(mu + lambda) survivor selection over the parents and each generation's children."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.parents: list = []
        self.children: list = []

    @property
    def population(self) -> list:
        """The parents (the survivors of the last selection)."""
        return list(self.parents)

    def _breed(self) -> Individual:
        o, tb = self.options, self.toolbox
        if len(self.parents) >= 2 and self.rng.random() < o.cxpb:
            p1, p2 = map(tb.clone, tb.select_parents(self.parents, 2))
            child, _ = tb.mate(p1, p2)  # the second child is dropped, as in DEAP's varOr
            if self.rng.random() < o.mutpb:
                (child,) = tb.mutate(child)
            return child
        (child,) = tb.mutate(tb.clone(tb.select_parents(self.parents, 1)[0]))
        return child

    def _accept(self, ind: Individual) -> None:
        mu = self.options.population
        if self.n_told <= mu:  # the random start
            self.parents.append(ind)
            if len(self.parents) == mu:
                self.parents = self.toolbox.select(self.parents, mu)
            return
        self.children.append(ind)
        if len(self.children) >= self.options.offspring:
            self.parents = self.toolbox.select(self.parents + self.children, mu)
            self.children = []

    def _population_state(self) -> dict:
        return {"parents": [ind.to_dict() for ind in self.parents], "children": [ind.to_dict() for ind in self.children],
                "crowding": [getattr(ind.fitness, "crowding_dist", None) for ind in self.parents]}  # NSGA-II's tournaments read it

    def _load_population(self, state: dict) -> None:
        self.parents = [Individual.from_dict(d, self.fitness_class) for d in state["parents"]]
        self.children = [Individual.from_dict(d, self.fitness_class) for d in state["children"]]
        for ind, dist in zip(self.parents, state["crowding"], strict=True):
            if dist is not None:
                ind.fitness.crowding_dist = dist


class MuPlusLambda(_Generational):
    """A (mu + lambda) genetic algorithm (DEAP ``eaMuPlusLambda``).

    Tournament parents, crossover or mutation, and the best ``population`` of parents
    and children survive (``tools.selBest``).
    """

    name = "mu_plus_lambda"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.toolbox.register("select_parents", sel_tournament, tournsize=self.options.tournament, rng=self.rng)
        self.toolbox.register("select", tools.selBest)


class NSGA2(_Generational):
    """NSGA-II (Deb et al. 2002) on the two objectives.

    The objectives are ``(speedup, accuracy)`` (analytic: ``(1/flops_ratio, params_ratio)``).
    Binary tournaments on dominance and crowding pick parents, and ``tools.selNSGA2``
    picks survivors from parents and children.
    """

    name = "nsga2"
    fitness_class = FitnessPareto

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.toolbox.register("select_parents", sel_tournament_dcd, rng=self.rng)
        self.toolbox.register("select", tools.selNSGA2)
