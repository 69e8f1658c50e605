"""ragloop's version, in a leaf module: anything may import it without importing the package's names.

    >>> from ragloop._version import __version__
"""

__version__ = "0.1.0"
