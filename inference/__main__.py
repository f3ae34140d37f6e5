"""`python -m inference ...`: see inference/cli.py."""
import sys

from inference.cli import main

sys.exit(main())
