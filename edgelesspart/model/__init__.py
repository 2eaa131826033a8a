"""Build stage 1, the model: the cut-point graph, the zoo, datasets, training and LiteRT conversion.

Owns what is true of a Keras model before any device is considered: :mod:`.graph` finds the cut
points (tensors every input-to-output path crosses) and extracts sub-models between them,
:mod:`.zoo` builds zoo and user models, :mod:`.datasets` loads the offline data splits,
:mod:`.training` trains a backbone, :mod:`.litert` converts a Keras model to LiteRT. TensorFlow is
imported lazily through :mod:`edgelesspart._lazy`. It may import only the runtime core's plan
names, :mod:`edgelesspart.errors` and the root helpers; the contracts in ``pyproject.toml``
(``lint-imports``) enforce it.
"""
