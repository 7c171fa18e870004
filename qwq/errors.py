"""Errors qwq raises for bad input: each names what was wrong."""


class QwQError(Exception):
    """Base class for every error qwq raises on purpose."""


class CheckpointError(QwQError):
    """A checkpoint (directory, shard, GGUF file, config) is missing, corrupt or unsupported."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks for something we refuse to do (pickle weights, remote code)."""


class TemplateError(QwQError):
    """A chat template failed, tried to escape the sandbox, or ran past its caps."""


class RequestError(QwQError, ValueError):
    """A request is invalid: bad sampling value, prompt too long for the context, ...
    code names the rule broken where a client may act on it (the server's error `code`)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class QueueFullError(QwQError):
    """The engine's waiting queue is full: the caller should retry later."""


class TooManyTokens(QwQError):
    """A text holds more tokens than the caller allowed; it was refused without being encoded
    in full."""

    def __init__(self, limit: int):
        super().__init__(f"more than {limit} tokens")
        self.limit = limit
