"""clipml: multi-label image recognition with partial labels on frozen CLIP models."""

__version__ = "0.1.0"
