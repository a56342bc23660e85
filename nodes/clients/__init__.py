"""The only code that talks to the lab's servers: one module per service (ollama, comfyui).

Every failure is a ServiceError whose message says what happened in words a user can act on,
and whose `permanent` flag says whether trying again can help.
"""

from __future__ import annotations


class ServiceError(Exception):
    def __init__(
        self, message: str, *, permanent: bool = False, status: int | None = None, reached: bool = True
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        # The HTTP status the server answered with, when it answered at all.
        self.status = status
        # False only when the request cannot have reached the server (no connection was made):
        # then nothing it asked for can have happened there.
        self.reached = reached

    def __str__(self) -> str:
        return self.message


class AnswerTooLarge(ServiceError):
    """The answer (or the file) is over the limit we read: the same question gets the same
    answer, so it is permanent, and asking again would only fetch it again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class ServiceTimeout(ServiceError):
    """Connected, but the answer did not come in time: the server is alive but busy (loading a
    model, rendering), which is not the same as being down."""
