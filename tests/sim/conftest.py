"""The simulator tests' fixtures: a client HTTP session (``http``) and a running simulator (``sim``)."""

from .server_helpers import http, sim

__all__ = ["http", "sim"]
