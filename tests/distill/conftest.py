"""The self-distillation tests import their helpers (`distill_helpers`) from this directory."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
