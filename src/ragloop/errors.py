"""The one exception type for errors a user can cause and fix."""


class RagloopError(Exception):
    """Bad input, a missing file, an index that does not match the encoder, a corrupt checkpoint.

    The message says what is wrong and where. The command line prints it as one line on stderr and
    exits non-zero, without a traceback.
    """


def first_line(e: Exception) -> str:
    """`Type: first line of the message` (at most 200 characters), for a one-line RagloopError that
    wraps a library's exception."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"
