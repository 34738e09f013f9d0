"""comp: a competition workflow for small-data image classification.

`from comp import Competition` is the Python API (comp.api); it is imported on first
use, so `import comp` stays light (no TensorFlow, no Hydra).
"""

__version__ = "0.1.0"
__all__ = ["Competition", "__version__"]


def __getattr__(name: str):
    if name == "Competition":
        from comp.api import Competition

        return Competition
    raise AttributeError(f"module 'comp' has no attribute {name!r}")
