"""One exception family, so callers can catch clipml's own user-facing errors."""


class ClipmlError(Exception):
    """A user-facing error: the message says what was expected, what was found and where."""


class BackboneError(ClipmlError):
    """A CLIP model cannot be built, loaded or used as asked."""


class DataError(ClipmlError):
    """A dataset, annotation, mask or image file is missing or malformed."""


class ConfigError(ClipmlError):
    """A config file or override is invalid."""


class CheckpointError(ClipmlError):
    """A checkpoint cannot be read or does not match the model it is loaded into."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, with a message saying what the run folder holds and how to resume.
    A KeyboardInterrupt (not a ClipmlError), so code that catches clipml's errors still stops."""


class ExportError(ClipmlError):
    """A model cannot be exported (a missing exporter package) or its export disagrees with PyTorch."""
