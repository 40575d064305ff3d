"""Logging set-up and the clean failure path shared by stage scripts and the CLI."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from midipipe.core.errors import NothingToLearn, ParamError, SourceError
from midipipe.core.reports import Skip

# Errors a user fixes in params or inputs: one clear line, no stack trace.
USER_ERRORS = (ParamError, SourceError, FileNotFoundError)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def run_main(fn: Callable[[], object], skip: Skip | None = None) -> None:
    """Run a stage's main: user errors exit 2 with their message alone; a stage that has
    nothing to learn (`NothingToLearn`) writes its `skip` outputs and exits 0."""
    setup_logging()
    try:
        fn()
    except NothingToLearn as exc:
        if skip is None:
            raise
        logging.getLogger("midipipe").warning("skipped: %s", exc)
        skip.write(str(exc))
    except USER_ERRORS as exc:
        logging.getLogger("midipipe").error("%s", exc)
        sys.exit(2)
