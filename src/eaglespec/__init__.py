"""eaglespec: train EAGLE draft heads for any Hugging Face causal LM and decode losslessly with them.

Model paths (`resolve_model_path`, `bundled_model_path`) live in `eaglespec.models`. The root holds only the
version, so `import eaglespec` stays light and no module inside the package imports from the root.
"""

from eaglespec._version import __version__

__all__ = ["__version__"]
