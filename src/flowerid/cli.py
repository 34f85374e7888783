"""The console script's old entry point (`flowerid = flowerid.cli:main` in installs made before the
apps/ move); the command line lives in flowerid.apps.cli. Drop once no install points here."""

from .apps.cli import main

__all__ = ["main"]
