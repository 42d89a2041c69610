"""The optional libraries conversions use (torch, scikit-learn, skl2onnx,
onnxruntime.quantization): imported only when needed, with an install hint when missing;
their warnings and chatter routed to the debug log; their errors cut to the telling line.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Final

from p2pnet.errors import UsageError

__all__ = ["MODELS_EXTRA", "first_line", "quiet_libraries", "require"]

log = logging.getLogger(__name__)

MODELS_EXTRA: Final = "pip install 'p2pnet[models]'"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, a package of the ``models`` extra, for ``purpose``.

    Raises:
        UsageError: the package is not installed (the message says how to install it).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"{purpose} needs the Python package {module.split('.')[0]!r}, which is not "
            f"installed: {MODELS_EXTRA}"
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

    root = logging.getLogger()
    quiet = _ToDebug()
    noisy = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    saved = [logger.level for logger in noisy]
    root.addFilter(quiet)  # onnxruntime.quantization logs through the root logger
    for logger in noisy:
        logger.setLevel(logging.ERROR)
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
