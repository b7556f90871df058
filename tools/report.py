#!/usr/bin/env python
"""Thin wrapper: see `python tools/report.py --help` (also installed as `clipml-report`)."""

from clipml.cli import report

if __name__ == "__main__":
    report()
