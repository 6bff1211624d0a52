"""The ``activecall`` command line."""

from __future__ import annotations

import click

from activecall import __version__


@click.group()
@click.version_option(__version__, prog_name="activecall")
def main() -> None:
    """activecall: a voice-AI media gateway."""
