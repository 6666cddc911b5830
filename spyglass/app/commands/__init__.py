"""Subcommands of ``spyglass``: each module here defines ``register(subparsers)``.

A subcommand's ``register`` adds its parser and sets ``func`` to a callable taking the parsed
arguments and returning an exit code.
"""
