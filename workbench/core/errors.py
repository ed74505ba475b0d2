"""Errors a user can cause.

Each carries a one-line message that names what was wrong and where (config field, file,
parameter). The CLI prints that line and exits with code 2; nothing here is a library traceback.
"""


class WorkbenchError(Exception):
    """Base class: a problem with the user's input or environment, reported as one line."""

    exit_code = 2


class ConfigError(WorkbenchError):
    """The experiment file is missing, unparsable or fails validation."""


class DataError(WorkbenchError):
    """A data set cannot be loaded or does not fit the model."""


class ModelError(WorkbenchError):
    """A model cannot be loaded, trained or exported."""


class TrialPruned(WorkbenchError):
    """This deployment configuration cannot be built or run here; the reason is kept.

    Not a failure: the sweep records the trial as PRUNED with the message, for example
    "no MatMul to quantize to 4 bits" or "provider CUDAExecutionProvider is not available".
    """


class TrialFailed(WorkbenchError):
    """A trial notebook raised, timed out or lost its kernel."""

    def __init__(self, reason: str, notebook: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.notebook = notebook


def first_line(err: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of ``err``'s message (at most ``limit`` characters), or its type
    name when the message is empty (a plain string: ""). ``str(err).splitlines()[0]`` raises
    IndexError on an empty message, which turns one bad input into a traceback."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return "" if isinstance(err, str) else type(err).__name__
