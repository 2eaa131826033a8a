"""TF-free runtime core shared by the edge service and the cloud function.

RULE: nothing in this package may import tensorflow or keras, directly or indirectly, and
nothing here imports build-time code from ``edgelesspart`` (only ``edgelesspart.errors``).
Allowed dependencies: the standard library, numpy, ai-edge-litert, requests, boto3.
``tests/runtime/test_import_without_tensorflow.py`` enforces this in a subprocess.
"""
