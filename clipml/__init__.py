"""clipml: multi-label image recognition with partial labels on frozen CLIP models."""

__version__ = "0.1.0"
__all__ = ["Predictor", "Predictions"]


def __getattr__(name):
    """`clipml.Predictor` (clipml.predictor), imported on first use: `import clipml` stays light
    and free of import cycles (the checkpoint writer reads `clipml.__version__`)."""
    if name in __all__:
        from clipml import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'clipml' has no attribute {name!r}")
