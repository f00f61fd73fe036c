"""Model families, one file each, registering a `fpar.registry.ModelSpec` (discovered by `fpar.registry`).

Shared parts: ``backbone.py`` (ResNet trunk), ``layers/`` (ConvLSTM, CAM, representation flow), ``heads.py``
(classifier, motion-segmentation and discriminator heads, each with its loss) and ``outputs.py``.
"""
