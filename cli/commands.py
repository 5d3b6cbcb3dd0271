"""Importing this module registers every command on ``cli.app.app``."""

from cli import classify, demo, featurize, train  # noqa: F401
