#!/usr/bin/env python
"""Thin wrapper: see `python tools/predict.py --help` (also installed as `clipml-predict`)."""

from clipml.cli import predict

if __name__ == "__main__":
    predict()
