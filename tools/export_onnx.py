#!/usr/bin/env python
"""Thin wrapper: see `python tools/export_onnx.py --help` (also installed as `clipml-export-onnx`)."""

from clipml.cli import export_onnx

if __name__ == "__main__":
    export_onnx()
