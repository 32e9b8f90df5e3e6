"""What the domain (pipeline, batcher, runtime) refuses or fails with, in its own words.

No HTTP here: the edge maps each class to a status and an error code in one table
(service/schema.py, `api_error`), the way TEI maps its `TextEmbeddingsError` to an `ErrorType` and
kserve maps its exceptions in `errors.py`. `retry_after` says when retrying can succeed.
"""

from __future__ import annotations

# When a refused or expired request may retry (seconds), where nothing more precise is known.
RETRY_AFTER_SECONDS = 1


class ServiceError(Exception):
    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class AtCapacity(ServiceError):
    """The queue (or the in-flight bound) is full right now."""


class OverClientShare(ServiceError):
    """This client is over its own share (rate, or sentences in flight); others are served."""


class QueueWaitExpired(ServiceError):
    """A sentence waited longer than the queue timeout: a late answer is worth less than a retry."""


class NotServing(ServiceError):
    """The runtime is starting, draining or closed."""


class EngineFailure(ServiceError):
    """The engine failed on the batch this request's sentences were in (other batches are unaffected)."""


class UnsupportedSource(ServiceError):
    """In auto mode, text `index` is confidently in a language the model cannot translate."""

    def __init__(self, index: int, language: str, name: str, confidence: float) -> None:
        super().__init__(
            f"text {index} looks like {name} ({language}, confidence {confidence}), which the model cannot translate"
        )
        self.index, self.language, self.name, self.confidence = index, language, name, confidence


class Unauthenticated(ServiceError):
    """API keys are on and the request has no valid key (the message never hints at valid keys)."""


class TooManyAuthFailures(ServiceError):
    """This address failed authentication too often; it may retry after `retry_after` (a valid key is served)."""
