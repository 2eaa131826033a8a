"""The one exception tree of EdgeLessPart.

Every error a user can cause derives from :class:`EdgeLessPartError`; the CLI turns it into a
one-line message and a non-zero exit code, never a traceback::

    EdgeLessPartError
    ├── ConfigError(ValueError)          bad option, config file or environment value
    ├── DependencyError(ImportError)     an optional extra is not installed (names the fix)
    ├── DatasetError(ValueError)         unknown dataset, unreadable file, offline CIFAR-10
    ├── ModelError(ValueError)           unknown zoo name, unloadable or unsupported model
    │   ├── GraphError                   nested models, no cut point, bad cut name
    │   └── PruningError                 a layer whose channels cannot be pruned safely
    ├── ProfileError(ValueError)         malformed profile or device file
    ├── PlanError(ValueError)            no split satisfies the constraint, bad plan file
    ├── ExitSpecError(ValueError)        bad exit spec or template (unknown layer, escape, ...)
    ├── TrainingError                    training could not run
    ├── BundleError(ValueError)          missing/corrupt manifest, hash mismatch, path escape
    │   └── BundleMismatchError          a request/tensor made for another bundle (client's fault)
    ├── CodecError(ValueError)           unknown codec, corrupt or truncated payload
    ├── InputError(ValueError)           a request tensor of the wrong shape/dtype/values
    ├── InferenceError                   a segment failed on validated input (a server fault)
    │   └── ServiceClosed                a request reached a service that is shutting down (503)
    ├── QueueDeadline                    the queue ahead of a request cannot be served in time (429)
    ├── OffloadError                     the cloud part could not answer
    │   ├── OffloadTimeout               no answer within the timeout
    │   ├── OffloadUnavailable           circuit breaker open / connection refused
    │   └── OffloadRejected              the cloud answered with an error status
    └── PipelineError                    a multi-node chain could not answer (after Ray's retries)
        ├── PipelineBusy                 the in-flight window is full (HTTP 429)
        ├── StageUnavailable             a stage is down and no node can host it in time (503)
        └── DeadlineExceeded             the stages are up but the answer missed its deadline (504)
"""

from __future__ import annotations


class EdgeLessPartError(Exception):
    """Base class of every error EdgeLessPart raises on purpose."""


class ConfigError(EdgeLessPartError, ValueError):
    """A bad option, configuration file or environment value."""


class DependencyError(EdgeLessPartError, ImportError):
    """An optional dependency is missing; the message names the install command."""


class DatasetError(EdgeLessPartError, ValueError):
    """A dataset could not be found, read or split."""


class ModelError(EdgeLessPartError, ValueError):
    """A model could not be built or loaded, or is not supported."""


class GraphError(ModelError):
    """The model graph cannot be cut where asked (nested model, unknown cut point, ...)."""


class PruningError(ModelError):
    """A model cannot be pruned safely (the message names the layer) or a bad pruning ratio."""


class ProfileError(EdgeLessPartError, ValueError):
    """A profile or device-profile file is malformed."""


class PlanError(EdgeLessPartError, ValueError):
    """No plan satisfies the constraint, or a plan file is malformed."""


class ExitSpecError(EdgeLessPartError, ValueError):
    """An exit spec or exit template was rejected."""


class TrainingError(EdgeLessPartError):
    """Training could not run."""


class BundleError(EdgeLessPartError, ValueError):
    """A bundle is missing, malformed, tampered with or escapes its directory."""


class BundleMismatchError(BundleError):
    """A request or tensor names a different bundle than the one served (the caller's fault)."""


class CodecError(EdgeLessPartError, ValueError):
    """A tensor payload could not be encoded or decoded."""


class InputError(EdgeLessPartError, ValueError):
    """An input tensor does not match what the bundle expects."""


class InferenceError(EdgeLessPartError):
    """A segment failed on input that passed validation: a fault of the server, not the caller."""


class ServiceClosed(InferenceError):
    """The service (its batcher) is shutting down: not the caller's fault (HTTP 503); retry."""


class QueueDeadline(EdgeLessPartError):
    """A request could not start within its queueing deadline (HTTP 429 with Retry-After)."""


class OffloadError(EdgeLessPartError):
    """The cloud part could not produce an answer."""


class OffloadTimeout(OffloadError):
    """The cloud part did not answer within the timeout."""


class OffloadUnavailable(OffloadError):
    """The cloud part cannot be reached (connection refused, circuit open)."""


class OffloadRejected(OffloadError):
    """The cloud part answered with an error status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PipelineError(EdgeLessPartError):
    """A multi-node pipeline could not answer (a stage failed after Ray's restarts/retries)."""


class PipelineBusy(PipelineError):
    """Every slot of the pipeline's in-flight window is taken (HTTP 429); retry shortly."""


class StageUnavailable(PipelineError):
    """A stage is down and no node could host it within the request's deadline (HTTP 503).

    ``retry_after_s`` is the caller's hint for ``Retry-After``.
    """

    def __init__(self, message: str, *, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = float(retry_after_s)


class DeadlineExceeded(PipelineError):
    """Every stage is up but the answer did not come within the request's deadline (HTTP 504)."""
