"""Exception hierarchy. Every error the library raises on purpose derives from ``ColbertRetrieverError``
and, where one fits, from the matching built-in, so ``except ValueError`` keeps working."""

from __future__ import annotations


class ColbertRetrieverError(Exception):
    """Base class of every error raised on purpose by colbert-retriever."""


class InvalidArgument(ColbertRetrieverError, ValueError):
    """An argument has a value the library cannot use (empty text, k <= 0, wrong shape...)."""


class InvalidType(ColbertRetrieverError, TypeError):
    """An argument has a type the library refuses to guess about."""


class IndexNotFoundError(ColbertRetrieverError, FileNotFoundError):
    """No index at the given path, or a file the index lists is missing."""


class IndexFormatError(ColbertRetrieverError, ValueError):
    """The index folder exists but is corrupt, truncated, or of another format version."""


class IncompatibleModelError(ColbertRetrieverError, ValueError):
    """The model given does not match the model the index was built with."""


class CheckpointError(ColbertRetrieverError, ValueError):
    """A checkpoint folder is of an unknown layout or is missing files."""


class IndexLockedError(ColbertRetrieverError, RuntimeError):
    """Another writer holds the index lock."""


class IndexClosedError(ColbertRetrieverError, RuntimeError):
    """The ``Index`` was closed; open it again to use it."""


class IndexWriteError(ColbertRetrieverError, OSError):
    """Writing the index failed in the operating system (an I/O error, a file size limit, files removed under a
    running writer). Nothing was committed by the failed write: the index keeps its last committed generation."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = None if path is None else str(path)


class DiskFullError(IndexWriteError):
    """The disk (or the user's quota) is full: the write stopped with nothing committed; free space and retry."""
