"""Subcommands of the ``fluxode`` CLI (see ``fluxode.cli``)."""
