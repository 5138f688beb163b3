"""One exception type for bad input: the CLI prints its message as a single line.

Every message names the problem *and* the fix, e.g.
``SAE d_in=512 does not match the model hidden size 576: pick an SAE trained on this model``.
"""


class GradsaeError(ValueError):
    """Bad input or environment; the message is meant for the user, not a traceback."""
