"""Errors a user can act on. Their message names the case, the file, the problem and the fix."""

__all__ = ["SscildError", "CohortError", "InputError"]


class SscildError(ValueError):
    """Base class: the command line prints these as one message, without a traceback."""


class CohortError(SscildError):
    """A cohort folder cannot be used as it is."""


class InputError(SscildError):
    """A scan or file given to a command is unusable (unreadable, not CT, wrong dimensionality...)."""
