"""The training, evaluation, inference and feature-cache machinery built on clipml's models and data."""
