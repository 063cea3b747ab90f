"""Glue for Snakemake ``script:`` entry points: logging into the rule's log."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def rule_logging(log_path: str | Path | None) -> Iterator[logging.Logger]:
    """Send logging and warnings to the rule's log file (and stderr).

    Any exception is logged with its message before it propagates, so the log
    names the failing file or key even when Snakemake only shows the exit code.
    """
    logger = logging.getLogger("vitlocal")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    for handler in handlers:
        warnings_logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            yield logger
    except Exception as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        raise
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            warnings_logger.removeHandler(handler)
            handler.close()
        logging.captureWarnings(False)
