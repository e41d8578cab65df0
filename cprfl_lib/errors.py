"""The one exception type users see.

Every error caused by input (a file, a line, a value, a missing download) is raised as
:class:`CprflError` with a one-line message that names the offending thing and, where
there is one, what to do about it. The CLI prints it without a traceback and exits 2.
"""


class CprflError(Exception):
    """A user-facing error: one line, naming the file, line or value at fault."""
