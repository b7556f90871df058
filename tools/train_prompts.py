#!/usr/bin/env python
"""Thin wrapper: see `python tools/train_prompts.py --help` (also installed as `clipml-train-prompts`)."""

from clipml.cli import train_prompts

if __name__ == "__main__":
    train_prompts()
