"""Runtime: reference interpreter, compiled models, command-line interface."""
