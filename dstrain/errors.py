"""The one base class of bad input: a config, a data file, a checkpoint or a device request that
cannot be used as given.  The CLI reports an ``InputError`` in one line (exit code 2); any other
exception is a bug in dstrain or in a user's model and keeps its traceback."""
from __future__ import annotations


class InputError(ValueError):
    """Something the user gave (a file, a key, a value, a request) is not usable; the message
    names it and says what was expected."""
