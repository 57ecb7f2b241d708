"""The one exception type that the command line turns into a one-line message."""


class UserError(ValueError):
    """Bad input from the user: a wrong option, a missing file, a corrupt checkpoint.

    The command line prints ``dirichlet-prune: error: <message>`` and exits with status 2.
    """
