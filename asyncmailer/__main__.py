"""`python -m asyncmailer`: the same as the `asyncmailer` command."""

from .cli import run

run()
