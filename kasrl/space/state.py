"""Search states: a partial kernel together with what the search knows about it.

A :class:`~kasrl.ir.graph.KernelGraph` is plain data (nodes, open branches,
constraints). Everything the search space and the completability oracle compute
about a graph while searching -- its action mask, the witness sizes that show it
can still be finished, cost bounds, rejections carried down an episode -- lives
here, next to the graph, much as ``torch.fx`` keeps analysis results in
``node.meta`` rather than in the node's operands. The caches belong to one state:
a state made by applying an action starts with none of them except those that
stay true along an episode (carried rejections and the running cost bound).

A state reads like its graph for the questions strategies ask (``steps``,
``width``, ``branch_shape``...); ``state.graph`` is the graph itself.

>>> from kasrl.space import SearchSpace
>>> space = SearchSpace()
>>> s = space.reset()
>>> s.steps, s.width, s.graph.n_primitives
(0, 1, 0)
"""

from __future__ import annotations

from kasrl.ir.graph import KernelGraph

__all__ = ["SearchState"]


class SearchState:
    """A partial kernel and the search's caches about it.

    Attributes:
        graph: the kernel graph (plain data).
        mask: the action mask once computed (shared: copy before writing to it).
        successors: ``(operands, effect id) -> (Prepared, oracle result)`` of the
            legal effects, filled with the mask.
        single: action index -> ``(legal, successor entry)`` for one-action queries.
        rejected: codes of effects rejected earlier in this episode (carried down).
        witness: sizes (symbol -> ``(ratio, exp)``) under which the state can be finished.
        witness_costs: the state's own costs per placement under the witness.
        domains: per-symbol choices allowed by single-symbol constraints.
        lb: lower bounds of the state's own costs over its domains.
        lb_running: a running lower bound of the state's costs along the episode.
        room: the oracle's slack and headroom per route.
        floors: lower bounds that divisibility puts on products of sizes.
        system: the graph's constraints and cost terms indexed by symbol.
        closing: with latency budgeted, each branch's pending finishing latency per route.
    """

    __slots__ = (
        "graph",
        "mask",
        "successors",
        "single",
        "rejected",
        "witness",
        "witness_costs",
        "domains",
        "lb",
        "lb_running",
        "room",
        "floors",
        "system",
        "closing",
    )

    #: The caches a state made by an action never inherits.
    CACHES = ("mask", "successors", "single", "witness", "witness_costs", "domains", "lb", "room", "floors", "system", "closing")

    def __init__(self, graph: KernelGraph) -> None:
        self.graph = graph
        self.mask = None
        self.successors = None
        self.single = None
        self.rejected = None
        self.witness = None
        self.witness_costs = None
        self.domains = None
        self.lb = None
        self.lb_running = None
        self.room = None
        self.floors = None
        self.system = None
        self.closing = None

    # -- what strategies ask of a state (read from the graph) -------------------------
    @property
    def steps(self) -> int:
        """Primitive applications and forks chosen so far."""
        return self.graph.steps

    @property
    def width(self) -> int:
        """Number of open branches."""
        return self.graph.width

    def branch_shape(self, i: int) -> tuple:
        """Shape of open branch ``i``."""
        return self.graph.branch_shape(i)

    @property
    def n_primitives(self) -> int:
        """Number of primitive applications (the input excluded)."""
        return self.graph.n_primitives

    def describe(self) -> str:
        """The graph as text (see :meth:`KernelGraph.describe`)."""
        return self.graph.describe()

    # -- copies ---------------------------------------------------------------------
    def clear(self) -> None:
        """Forget every cache (the graph changed)."""
        for name in self.__slots__[1:]:
            setattr(self, name, None)

    def share_caches(self, other: SearchState) -> None:
        """Take ``other``'s caches by reference (both describe the same state)."""
        for name in self.__slots__[1:]:
            setattr(self, name, getattr(other, name))

    def copy(self) -> SearchState:
        """A state over a copy of the graph, without any cache."""
        return SearchState(self.graph.copy())

    def __getstate__(self) -> dict:
        """Pickle the graph only: the caches hold process-local ids (effect ids) and are rebuilt on demand."""
        return {"graph": self.graph}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["graph"])

    def __repr__(self) -> str:
        return f"SearchState(steps={self.steps}, width={self.width}, nodes={len(self.graph.nodes)})"
