"""The training, evaluation, inference and feature-cache machinery built on clipml's models and data."""

from typing import Callable, Iterable, Optional

Progress = Optional[Callable[[Iterable, str], Iterable]]
"""How the loops show progress: progress(iterable, description) -> the same items (e.g. a tqdm
wrapper); None shows none."""
