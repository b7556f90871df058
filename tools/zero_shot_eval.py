#!/usr/bin/env python
"""Thin wrapper: see `python tools/zero_shot_eval.py --help` (also installed as `clipml-zero-shot-eval`)."""

from clipml.cli import zero_shot_eval

if __name__ == "__main__":
    zero_shot_eval()
