"""CSC: a learned context per class (class-specific CoOp), scored against the pooled image feature."""

from __future__ import annotations

from clipml.methods.coop import CoOp
from clipml.methods.registry import register_method


@register_method("csc_global")
class CSCGlobal(CoOp):
    class_specific = True
