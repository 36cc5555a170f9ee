r"""``docs/derivations.md``, generated from the op docstrings (their only source).

Each op's docstring says what it computes and derives its vector-Jacobian
product; this module adds the introduction below and writes one section per
op (``npgrad/ops/dense.py``, then ``npgrad/ops/conv.py``), in registration order::

    python -m npgrad.checking.derivations docs/derivations.md          # regenerate
    python -m npgrad.checking.derivations docs/derivations.md --check  # exit 1 if stale

A test runs the check, so an edited docstring without a regenerated page fails.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence

from ..ops.base import unbroadcast
from .gradcheck import all_ops

INTRO = r"""# Derivations of every backward pass

<!-- Generated from the op docstrings in src/npgrad/ops/ by
     `python -m npgrad.checking.derivations docs/derivations.md`: edit those, not this file. -->

Every op in `npgrad.ops` computes a *vector-Jacobian product* (vjp): given the
gradient $G = \partial f / \partial Y$ of a scalar loss $f$ with respect to the
op's output $Y$, it returns the gradient with respect to each input. This page
derives each one with the method of the exercise (section 6 of `exercise.md`):
differentials and the trace trick, never element-by-element derivatives.
Each section is the docstring of its op, so the code and this page cannot
drift apart.

## The method

**The link.** For a scalar $f$ of a matrix $X$, the gradient $\partial f/\partial X$
is the matrix with

$$df = \mathrm{tr}\Big(\big(\tfrac{\partial f}{\partial X}\big)^T dX\Big) = \sum_{ij} \tfrac{\partial f}{\partial X_{ij}}\, dX_{ij}.$$

So to find a gradient, write $df$, massage it into the form
$\mathrm{tr}(A^T dX)$, and read off $A$.

**Rules.** $d(X \pm Y) = dX \pm dY$, $d(XY) = dX\,Y + X\,dY$,
$d(X^T) = (dX)^T$, $d(X \odot Y) = dX \odot Y + X \odot dY$, and for an
element-wise function $d\,\sigma(X) = \sigma'(X) \odot dX$.

**Trace tricks.** $a = \mathrm{tr}(a)$ for a scalar, $\mathrm{tr}(A^T) = \mathrm{tr}(A)$,
$\mathrm{tr}(AB) = \mathrm{tr}(BA)$, and
$\mathrm{tr}(A^T (B \odot C)) = \mathrm{tr}((A \odot B)^T C)$.

**Backpropagation is this, once per op.** If $Y = \mathrm{op}(X)$ and we know $G$,
then $df = \mathrm{tr}(G^T dY)$; substituting the op's differential $dY$ in
terms of $dX$ and rearranging gives $\partial f/\partial X$. The engine then
passes that on as the $G$ of the op that produced $X$.
"""


def section(title: str, doc: str | None) -> str:
    return f"## {title}\n\n{inspect.cleandoc(doc or '')}\n"


def render() -> str:
    """The whole page: the introduction, broadcasting, then every op in the table."""
    parts = [INTRO, section("broadcasting", unbroadcast.__doc__)]
    parts += [section(name, op.__doc__) for name, op in all_ops().items()]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m npgrad.checking.derivations",
        description="Write docs/derivations.md from the op docstrings (stdout without PATH).",
    )
    parser.add_argument("path", nargs="?", help="the file to write, e.g. docs/derivations.md")
    parser.add_argument("--check", action="store_true", help="only report whether PATH is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.path is None:
        sys.stdout.write(text)
        return 0
    if args.check:
        try:
            with open(args.path, encoding="utf-8") as f:
                current = f.read()
        except OSError:
            current = None
        if current != text:
            print(
                f"{args.path} is stale: run python -m npgrad.checking.derivations {args.path}",
                file=sys.stderr,
            )
            return 1
        return 0
    from ..fileio import write_text

    write_text(args.path, text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
