"""The FIM code model recipe of issue 37 (see recipes/code/train.py)."""
