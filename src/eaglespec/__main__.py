"""`python -m eaglespec ...` (also what torchrun / deepspeed --module launch)."""

import sys

from eaglespec.cli import main

sys.exit(main())
