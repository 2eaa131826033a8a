"""EdgeLessPart: split Keras models across edge and cloud, with early exits.

Importing this package is cheap: TensorFlow is imported lazily inside the build-time functions
that need it (install it with ``pip install 'edgelesspart[build]'``).
"""

from edgelesspart.errors import EdgeLessPartError

__all__ = ["EdgeLessPartError", "__version__"]
__version__ = "0.1.0"
