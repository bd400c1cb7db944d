"""CLI: ``python -m trainer.synth preview --kind plates|scenes --n 32 --seed 0 --out preview.png``."""
from __future__ import annotations

import argparse

import numpy as np

from .preview import preview_grid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.synth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prev = sub.add_parser("preview", help="write a PNG grid of synthetic samples")
    prev.add_argument("--kind", choices=("plates", "scenes"), default="plates")
    prev.add_argument("--n", type=int, default=32)
    prev.add_argument("--seed", type=int, default=0)
    prev.add_argument("--out", default="preview.png")
    args = parser.parse_args(argv)
    preview_grid(np.random.default_rng(args.seed), args.out, args.kind, args.n)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
