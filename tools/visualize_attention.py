#!/usr/bin/env python
"""Thin wrapper: see `python tools/visualize_attention.py --help` (also installed as `clipml-visualize-attention`)."""

from clipml.cli import visualize_attention

if __name__ == "__main__":
    visualize_attention()
