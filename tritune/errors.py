"""One exception root for the whole stack; subclasses say which part failed.

Every message is one line that says what is wrong and what to do next, so the CLI can print it as is.
"""

from __future__ import annotations


class TrituneError(Exception):
    """Root of every error the stack raises on purpose."""

    exit_code = 2


class ConfigError(TrituneError):
    """An option, config file or environment variable has a bad value."""


class DataError(TrituneError):
    """A data set is missing, corrupt or unusable."""


class ModelInputError(TrituneError):
    """The model's interface (its inputs and outputs) is one tritune cannot serve, or a tensor does not fit it."""


class CheckpointError(TrituneError):
    """A model checkpoint cannot be read or does not match its architecture."""


class BuildError(TrituneError):
    """A builder step failed (training, pruning, quantization, compilation)."""


class ExportError(BuildError):
    """An exported model fails the ONNX checker or disagrees with PyTorch."""


class TargetUnavailableError(BuildError):
    """A compile target's toolchain (e.g. TensorRT) is not installed here."""


class PlanMismatchError(BuildError):
    """A TensorRT plan was built for another TensorRT release or GPU than the one that would serve it."""


class RepositoryError(TrituneError):
    """The Triton model repository cannot be read or written."""


class ServerError(TrituneError):
    """Triton could not be found, started, or reached."""


class ServerUnavailableError(ServerError):
    """Triton is not reachable (not started, crashed, or restarting)."""


class InferenceError(TrituneError):
    """Triton answered an inference request with an error (bad input, unknown model, ...)."""


class ModelNotFoundError(InferenceError):
    """The model name is unknown to the server, or not loaded."""


class RequestTimeoutError(InferenceError):
    """The request did not complete within its timeout."""


class AdminError(TrituneError):
    """A model-repository (load/unload) call was refused or failed."""


class LoadTestError(TrituneError):
    """The load generator could not run or gave no result (Locust missing or crashed, workers never connected)."""
