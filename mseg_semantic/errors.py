"""Exception families of the package.

Each family names the thing the user got wrong (a file, a key, a class name). The command line catches
:class:`MsegError` once and prints its message without a traceback; library users can catch the specific family.
A message that tells the caller which keyword argument to pass names it in ``keywords``, so that the command line
can name its own option instead (``mseg convert`` says ``--force`` where Python says ``overwrite=True``).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping


class MsegError(Exception):
    """Base class of every error this package raises on purpose.

    ``keywords``: the keyword arguments the message asks for, each with the text that asks for it (``{"arch":
    "arch=..."}``): the command line replaces that text with the option that sets the argument.
    """

    def __init__(self, *args: object, keywords: Mapping[str, str] | None = None) -> None:
        super().__init__(*args)
        self.keywords: dict[str, str] = dict(keywords or {})


class TaxonomyError(MsegError, ValueError):
    """Unknown taxonomy or class name, or label values that are not classes of the taxonomy."""


class CheckpointError(MsegError):
    """A checkpoint file that cannot be read or does not fit the model it is loaded into."""


class InputError(MsegError):
    """A user-supplied file, folder or argument that is missing, unreadable or malformed."""


class TooLargeError(InputError):
    """An input over a size limit (an image's pixel count, a request body): the one input error a service answers
    with 413 instead of 400."""


class DownloadError(MsegError):
    """A model or dataset archive could not be downloaded or is not the expected file; the message says what to do."""


_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space and run the command again; finished outputs are kept",
    errno.EDQUOT: "the disk quota is used up: free some space and run the command again; finished outputs are kept",
    errno.EROFS: "the file system is read-only: choose a folder you can write to",
    errno.EACCES: "permission denied: choose a folder you can write to, or change its permissions",
    errno.EPERM: "operation not permitted: choose a folder you can write to, or change its permissions",
    errno.ENAMETOOLONG: "the path is too long for the file system: choose a shorter output folder",
    errno.EMFILE: "too many open files: raise the limit ('ulimit -n') or use fewer workers",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error met while running a command: the path, what happened, what to do."""
    what = exc.strerror or exc.__class__.__name__
    where = f"{exc.filename}: " if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{exc.filename} -> {exc.filename2}: "
    hint = _OS_HINTS.get(exc.errno or -1)
    return f"{where}{what}" + (f" ({hint})" if hint else "")
