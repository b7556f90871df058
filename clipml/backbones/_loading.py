"""What the libraries print while fetching or reading weights, reduced to what a user can act on:
one line per failed download instead of the hub's retries, and a cause without torch's advice to
unpickle (clipml never loads weights with `weights_only=False`)."""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Iterator

logger = logging.getLogger("clipml.backbones")

# huggingface_hub's http_backoff logs "'<error>' thrown while requesting <METHOD> <url>" per try.
_FAILED_TRY = re.compile(r"'(?P<error>.*)' thrown while requesting (?P<method>\w+) (?P<url>\S+)", re.S)
_QUIET = ("huggingface_hub", "transformers", "urllib3", "filelock")
_HTTP = "huggingface_hub.utils._http"


class _OneLinePerDownload(logging.Filter):
    """Swallows the hub's per-try warnings; logs the first failure of each URL once, as clipml."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = set()

    def filter(self, record: logging.LogRecord) -> bool:
        match = _FAILED_TRY.match(record.getMessage())
        if match and match["url"] not in self.failed:
            self.failed.add(match["url"])
            logger.warning("download failed: %s (%s)", match["url"], cause_text(match["error"]))
        return False


class _DropDirect(logging.Filter):
    """Drops what libraries log straight on the root logger (open_clip's "Failed to download ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """While weights are fetched: the hub's retry warnings become one line per URL, the libraries'
    own warnings and root-logger errors are held back (the caller raises one BackboneError)."""
    quieted = {name: logging.ERROR for name in _QUIET}
    quieted[_HTTP] = logging.WARNING  # the per-try records must still be made, for the filter
    loggers = {name: logging.getLogger(name) for name in quieted}
    levels = {name: log.level for name, log in loggers.items()}
    one_line, direct = _OneLinePerDownload(), _DropDirect()
    loggers[_HTTP].addFilter(one_line)
    logging.getLogger().addFilter(direct)  # filters only records logged on the root logger itself
    for name, log in loggers.items():
        log.setLevel(quieted[name])
    try:
        yield
    finally:
        loggers[_HTTP].removeFilter(one_line)
        logging.getLogger().removeFilter(direct)
        for name, log in loggers.items():
            log.setLevel(levels[name])


def cause_text(error, limit: int = 240) -> str:
    """The first line of an error (its type when it is an exception), shortened, with any advice
    to load weights with `weights_only=False` left out: that would run code from the file."""
    text = str(error).strip()
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    if "weights_only" in text or "pickle" in line.lower():
        line = "not a readable PyTorch or safetensors file"
    if isinstance(error, BaseException):
        line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
