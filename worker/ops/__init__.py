"""The operators' commands (``replay``, ``status``): argument parsing, the commands, their output.
Their database calls are in ``worker.store.operations``."""
