"""Exception families of the package.

Each family names the thing the user got wrong (a file, a key, a class name). The command line catches
:class:`MsegError` once and prints its message without a traceback; library users can catch the specific family.
"""

from __future__ import annotations


class MsegError(Exception):
    """Base class of every error this package raises on purpose."""


class TaxonomyError(MsegError, ValueError):
    """Unknown taxonomy or class name, or label values that are not classes of the taxonomy."""


class CheckpointError(MsegError):
    """A checkpoint file that cannot be read or does not fit the model it is loaded into."""


class InputError(MsegError):
    """A user-supplied file, folder or argument that is missing, unreadable or malformed."""


class DownloadError(MsegError):
    """A model or dataset archive could not be downloaded or is not the expected file; the message says what to do."""
