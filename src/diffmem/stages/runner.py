"""Glue for rule scripts: send a job's output to its log and turn known errors into one line."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback

from ..errors import ConfigError, DataError

EXPECTED = (DataError, ConfigError, ValueError, FileNotFoundError)


@contextlib.contextmanager
def logged(log_path: str):
    """Redirect stdout, stderr and logging to ``log_path``; on a known error exit with one line."""
    with open(log_path, "w", buffering=1) as fh:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = fh
        logging.basicConfig(stream=fh, level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            yield
        except EXPECTED as err:
            traceback.print_exc(file=fh)
            sys.stdout, sys.stderr = old_out, old_err
            sys.exit(f"error: {err}")
        except BaseException:
            traceback.print_exc(file=fh)
            raise
        finally:
            sys.stdout, sys.stderr = old_out, old_err
