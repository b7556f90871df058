#!/usr/bin/env python
"""Thin wrapper: see `python tools/complete_labels.py --help` (also installed as `clipml-complete-labels`)."""

from clipml.cli import complete_labels

if __name__ == "__main__":
    complete_labels()
