"""Structured pruning: remove whole filters/channels from Keras 3 functional models.

This package owns channel surgery and the measurements built on it:

* :mod:`~edgelesspart.pruning.groups` walks a functional graph and finds the **channel groups**:
  sets of layer outputs that must keep the same channels (tensors joined by ``Add``/``Multiply``,
  a depthwise conv and BatchNormalization following their input, ``Concatenate`` offsets, a
  ``Dense`` after ``Flatten``/global pooling). Channels reaching the model output or input are
  never pruned; a layer it does not understand is refused with its name (:class:`PruningError`).
  Squeeze-excite blocks (``Reshape`` keeping the channel axis) and ``SeparableConv`` are pruned.
* :mod:`~edgelesspart.pruning.surgery` ranks each group's channels by the L1 norm of their
  filters (Li et al., 2017), rebuilds a *smaller* model with ``keras.models.clone_model`` and
  copies the kept weights in: fewer parameters, not masks.
* :mod:`~edgelesspart.pruning.report` says what each prune achieved against what was asked and
  which layers held filters back (:class:`PruningWarning` when it is a large share).
* :mod:`~edgelesspart.pruning.curves` fine-tunes briefly and measures accuracy, LiteRT latency,
  parameters and memory against the pruning ratio, stores them as JSON (:class:`PruningCurve`)
  and fits polynomials that the SlimEdge optimiser (:mod:`edgelesspart.slimedge`) reuses.

TensorFlow/Keras are imported lazily inside the functions.
"""

from edgelesspart.pruning.groups import ChannelGraph, ChannelGroup, HeldChannels, analyze
from edgelesspart.pruning.report import PruneReport, PruningWarning
from edgelesspart.pruning.surgery import PruneResult, prune_model

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "HeldChannels",
    "PruneReport",
    "PruneResult",
    "PruningWarning",
    "analyze",
    "prune_model",
]
