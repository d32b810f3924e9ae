"""``python -m training fit|slim|hyperfit|distill|heads|export|int8|card|subset``: train the network, export shipped weights."""
from __future__ import annotations

import argparse
import sys

from . import card, data, distill, export, heads, hyperfit, int8ranges, loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    loop.add_arguments(sub.add_parser("fit", help="train (or resume) a model"))
    loop.add_slim_arguments(sub.add_parser("slim", help="checkpoint without optimizer state (to commit)"))
    hyperfit.add_arguments(sub.add_parser("hyperfit", help="fit the hyperprior on whole images, transforms frozen"))
    distill.add_arguments(sub.add_parser("distill", help="train a smaller synthesis, the rest of a checkpoint frozen"))
    heads.add_arguments(sub.add_parser("heads", help="train the reduced-resolution output heads, the model frozen"))
    export.add_arguments(sub.add_parser("export", help="checkpoint -> weights file, model card, phase page"))
    int8ranges.add_arguments(sub.add_parser("int8", help="activation ranges of the int8 analysis, after export"))
    card.add_arguments(sub.add_parser("card", help="rewrite the model card and phase page from the weights and results"))
    data.add_subset_arguments(sub.add_parser("subset", help="a seeded pick of training images under a byte budget"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
