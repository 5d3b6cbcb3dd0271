"""Importing this module registers every command on ``cli.app.app``."""

from cli import demo, featurize  # noqa: F401
