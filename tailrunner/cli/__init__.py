"""The ``tailrunner`` command line."""
