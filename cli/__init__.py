"""The ``alexfeat`` command line: parses options, builds configs, calls core functions."""
