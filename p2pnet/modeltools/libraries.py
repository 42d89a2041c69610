"""The optional libraries conversions use (torch, scikit-learn, skl2onnx,
onnxruntime.quantization; tensorflow, keras, tf2onnx): imported only when needed, with an
install hint naming their extra when missing; their warnings and chatter routed to the
debug log; their errors cut to the telling line.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Final

from p2pnet.errors import UsageError

__all__ = [
    "MODELS_EXTRA",
    "TENSORFLOW_EXTRA",
    "first_line",
    "native_output_to_debug",
    "quiet_libraries",
    "require",
]

log = logging.getLogger(__name__)

MODELS_EXTRA: Final = "pip install 'p2pnet[models]'"
TENSORFLOW_EXTRA: Final = "pip install 'p2pnet[tensorflow]'"

# The packages of the ``tensorflow`` extra (keras comes with tensorflow); the others are
# the ``models`` extra's.
_TENSORFLOW_PACKAGES: Final = frozenset({"tensorflow", "keras", "tf2onnx"})
# Python loggers of the TensorFlow packages, routed to the debug log by quiet_libraries
# ("tensorflow" has a stderr handler of its own; keras warns through "absl").
_TENSORFLOW_LOGGERS: Final = ("tensorflow", "tf2onnx", "absl", "keras")


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, a package of the ``models`` or ``tensorflow`` extra, for
    ``purpose``. TensorFlow's packages are imported with its C++ logging turned down
    (TF_CPP_MIN_LOG_LEVEL, unless set) and what it still prints sent to the debug log.

    Raises:
        UsageError: the package is not installed (the message says how to install it).
    """
    top = module.split(".")[0]
    tensorflow = top in _TENSORFLOW_PACKAGES
    try:
        if not tensorflow:
            return importlib.import_module(module)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no INFO or WARNING lines
        with native_output_to_debug():
            return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or top).split(".")[0]
        extra = TENSORFLOW_EXTRA if tensorflow else MODELS_EXTRA
        raise UsageError(
            f"{purpose} needs the Python package {missing!r}, which is not installed: {extra}"
        ) from None


def first_line(exc: BaseException) -> str:
    """The most telling line of a library's exception (TorchScript puts it last)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and ("Traceback" in lines[0] or "TorchScript interpreter" in lines[0]):
        return lines[-1]
    return lines[0]


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Route the converters' warnings and chatter to p2pnet's debug log, not the terminal."""

    class _ToDebug(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            log.debug("%s: %s", record.name, record.getMessage())
            return False

    class _ToDebugHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log.debug("%s: %s", record.name, record.getMessage())

    root = logging.getLogger()
    quiet = _ToDebug()
    noisy = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    saved = [logger.level for logger in noisy]
    routed = [logging.getLogger(n) for n in _TENSORFLOW_LOGGERS]
    saved_routes = [(logger.handlers[:], logger.propagate) for logger in routed]
    root.addFilter(quiet)  # onnxruntime.quantization logs through the root logger
    for logger in noisy:
        logger.setLevel(logging.ERROR)
    to_debug = _ToDebugHandler()
    for logger in routed:  # their children's records too (tf2onnx.tfonnx ...)
        logger.handlers[:] = [to_debug]
        logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            log.debug("%s: %s", w.category.__name__, w.message)
    finally:
        root.removeFilter(quiet)
        for logger, level in zip(noisy, saved, strict=True):
            logger.setLevel(level)
        for logger, (handlers, propagate) in zip(routed, saved_routes, strict=True):
            logger.handlers[:] = handlers
            logger.propagate = propagate


@contextlib.contextmanager
def native_output_to_debug() -> Iterator[None]:
    """Send what is written to file descriptor 2 while the block runs (TensorFlow's C++
    logging, which TF_CPP_MIN_LOG_LEVEL does not silence entirely: the oneDNN notice,
    absl's) to p2pnet's debug log instead of the terminal."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2: nothing to catch
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip():
                    log.debug("stderr: %s", line)
