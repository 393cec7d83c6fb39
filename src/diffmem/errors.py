"""Every error class of diffmem. Each carries one line that names the bad value and what is
expected; rule scripts turn them into that line (:func:`diffmem.stages.runner.logged`)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is wrong; the message is one line naming the key."""


class DataError(RuntimeError):
    """A data file is missing, corrupt, or cannot give what the config asks for."""


class ModelFolderError(ValueError):
    """The folder is not a model this workflow can audit; the message is one line."""
