"""`python -m slimlab` runs the command line."""
import sys

from slimlab.cli import main

sys.exit(main())
