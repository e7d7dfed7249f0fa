"""Exceptions that carry a message meant for the user (CLI: one line on stderr, exit 2)."""


class SnnlError(Exception):
    """Base class: the message names what was given and what was expected."""


class InputError(SnnlError, ValueError):
    """A data file, array or argument that does not fit (missing key, wrong shape, NaN)."""


class RepositoryError(SnnlError):
    """A model repository entry that is missing, malformed or tampered with."""


class UnavailableError(SnnlError):
    """A part of the scorer cannot answer right now (a shard is down or restarting): the request
    is refused rather than answered from part of the reference; retrying later may succeed."""
