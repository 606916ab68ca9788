"""The error a bad setting raises: caught before any compute, and shown by the CLI as one line."""

__all__ = ["ConfigurationError", "MissingFileError"]


class ConfigurationError(ValueError):
    """A setting, a file or a model that lightning-legr cannot work with; the message says what to change."""


class MissingFileError(ConfigurationError, FileNotFoundError):
    """A file named in the settings does not exist."""
