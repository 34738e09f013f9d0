"""comp: a competition workflow for small-data image classification."""

__version__ = "0.1.0"
