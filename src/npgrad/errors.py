"""npgrad's exception hierarchy.

Every error a user can cause and fix derives from :class:`NpgradError`; the
command line catches exactly these and prints their message on one line.
Anything else is a bug in npgrad and keeps its traceback.
"""

from __future__ import annotations


class NpgradError(Exception):
    """Base class of every error a user can act on."""


class ShapeError(NpgradError, ValueError):
    """Arrays whose shapes do not fit the operation."""


class GradError(NpgradError, RuntimeError):
    """Misuse of the autodiff engine (backward on a non-scalar, a freed graph...)."""


class GradcheckError(NpgradError, AssertionError):
    """A gradient check failed, or was asked to check something it cannot."""


class DatasetError(NpgradError):
    """A dataset could not be found, downloaded, verified or parsed."""


class IDXFormatError(DatasetError, ValueError):
    """A file is not a valid IDX file; the message names the file and the defect."""


class ChecksumError(DatasetError):
    """A downloaded or local file does not have the expected SHA-256."""


class CheckpointError(NpgradError):
    """A checkpoint is missing, corrupt, pickled, or does not fit the model."""


class ConfigError(NpgradError, ValueError):
    """An invalid option: architecture string, epochs, learning rate, path..."""


class DeviceError(ConfigError):
    """A device that cannot be used: CuPy not installed, no GPU, or arrays on two devices."""


class TrainingDiverged(NpgradError, FloatingPointError):
    """The loss became NaN or infinite."""


class Interrupted(NpgradError):
    """Training stopped by Ctrl-C; the message says what was saved and how to resume."""


class RankLost(NpgradError):
    """A collective failed because another rank of a data-parallel run stopped (killed, out of
    memory); the checkpoint keeps the last saved epoch."""


class RunLocked(ConfigError):
    """Another process is training in the same run directory."""


class NotARegularFile(NpgradError):
    """A write would replace what is not a regular file: a device, a FIFO, a socket, a
    directory or a symbolic link (``/dev/null``, ``/dev/stdout``). npgrad only creates files
    and replaces regular ones; not an ``OSError``, so no caller mistakes it for a retryable
    failure (a download does not try the next mirror)."""


class DownloadError(DatasetError):
    """Every mirror failed; ``failures`` lists (mirror, reason) pairs."""

    def __init__(self, message: str, failures: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class ReplayDiverged(NpgradError):
    """A check replayed in the parent asked for an answer that the child's recording does not
    hold next: the user's file changed npgrad, or answered differently, inside the child."""


class LayerCheckError(NpgradError):
    """The user's file could not be loaded or holds no layer classes."""


class NotCheckable(NpgradError):
    """A function pair npgrad cannot check (an unknown loss, no known shapes): the report says
    NOT CHECKED with this reason, and it does not count as a failure."""


class GradingError(NpgradError):
    """``npgrad grade`` cannot start: the submissions folder or the rubric is unusable."""


class GraphvizMissing(NpgradError):
    """Rendering needs Graphviz's ``dot`` program."""


class ImageError(ConfigError):
    """An image given to ``predict`` cannot be read or is not a picture of a digit."""


class DatasetContentError(DatasetError, ValueError):
    """Well-formed data that cannot be right: labels outside the classes, empty or mismatched
    splits, pixels outside their range; the message names the file, the index and the value."""


class BlankImageError(ImageError):
    """An image holds no digit: uniform, fully transparent, or only specks of noise."""


class SafetensorsError(CheckpointError):
    """A safetensors file is malformed, or its tensors do not fit the module they load into."""


class ExportError(NpgradError, ValueError):
    """A network cannot be exported as asked: unknown format, unsupported layer, missing extra."""


class ServeError(NpgradError):
    """The draw-a-digit server cannot start (port in use, address not available...)."""


class RequestRejected(ServeError):
    """A request to ``npgrad serve`` that is answered with a 4xx status and this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UserCodeFailed(NpgradError):
    """A student's layer or function failed in a way that ends its check; the message says how.

    ``retry`` is set for an ordinary exception in forward: other input shapes may fit.
    """

    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


class CompileWarning(NpgradError, UserWarning):
    """A compiled step (or one of its signatures) runs eagerly; the message says why.

    A warning, not an error: the step still gives the right numbers, only slower.
    """
