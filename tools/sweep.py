#!/usr/bin/env python
"""Thin wrapper: see `python tools/sweep.py --help` (also installed as `clipml-sweep`)."""

from clipml.cli import sweep

if __name__ == "__main__":
    sweep()
