"""`python -m ovclip.cli`: the same command as the `ovclip` entry point."""

from ovclip.cli import main

main()
