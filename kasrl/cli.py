"""Command line: ``python -m kasrl show KERNEL.json [--shape CxHxW]``.

Every command prints one line naming what is wrong and exits with status 2 on
bad input; nothing is written in that case.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kasrl.errors import KasrlError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _cmd_show(args: argparse.Namespace) -> int:
    from kasrl.analysis import cost_report
    from kasrl.codegen.draw import draw_kernel
    from kasrl.codegen.source import kernel_source
    from kasrl.ir.canonical import kernel_hash, short_id
    from kasrl.ir.serialize import load_kernel
    from kasrl.solver.budget import parse_placements

    (p,) = parse_placements(args.shape, "--shape")
    graph = load_kernel(args.kernel)
    if graph.sizes is None:
        raise KasrlError(f"{args.kernel}: the kernel has no solved sizes (`sizes` is missing)")
    try:
        for s, choice in graph.sizes.items():
            choice.value(p.c)
    except ValueError as e:
        raise KasrlError(f"--shape {args.shape}: {e}") from None
    h = kernel_hash(graph)
    print(kernel_source(graph, doc=f"kasrl kernel {short_id(h)}"))
    r = cost_report(graph, p)
    print(f"# at {p}: FLOPs {r['flops']:,} = {r['flops_ratio']:.3f}x a 3x3 conv ({r['conv_flops']:,}); "
          f"params {r['params']:,} = {r['params_ratio']:.3f}x ({r['conv_params']:,})")
    out = Path(args.picture) if args.picture else Path(args.kernel).with_suffix(".png")
    draw_kernel(graph, out, f"kernel {short_id(h)}")
    print(f"# picture: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m kasrl`` argument parser."""
    parser = _Parser(prog="python -m kasrl", description="kasrl: kernel architecture search")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    show = sub.add_parser("show", help="print a kernel's source and cost, and draw it")
    show.add_argument("kernel", help="kernel JSON document")
    show.add_argument("--shape", default="64x56x56", help="placement CxHxW for the cost (default 64x56x56)")
    show.add_argument("--picture", default=None, help="where to write the picture (.png or .svg; default next to the kernel)")
    show.set_defaults(run=_cmd_show)
    return parser


def main(argv: list | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KasrlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
