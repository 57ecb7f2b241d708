"""The one exception type that the command line turns into a one-line message."""


class UserError(ValueError):
    """Bad input from the user: a wrong option, a missing file, a corrupt checkpoint.

    The command line prints ``dirichlet-prune: error: <message>`` and exits with status 2.
    """


class NumericalError(RuntimeError):
    """A run went numerically wrong (non-finite ELBO, collapsed posterior, broken surgery).

    The message names the layer and the step; the command line prints it on one line and exits
    with status 3.
    """
