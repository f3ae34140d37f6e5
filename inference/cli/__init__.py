"""The command line (`python -m inference`): the commands and their options (commands.py), the text
reports they print (report.py)."""
from inference.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
