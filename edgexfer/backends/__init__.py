"""Runtimes behind one small interface (the Polygraphy pattern): see :mod:`edgexfer.backends.base`."""

from edgexfer.backends.base import Backend, BuildResult, Runner, available_backends, get_backend

__all__ = ["Backend", "BuildResult", "Runner", "available_backends", "get_backend"]
