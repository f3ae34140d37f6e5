"""`python -m inference ...`: see inference/cli/."""
import sys

from inference.cli import main

sys.exit(main())
