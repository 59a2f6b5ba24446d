"""LRPSegmentationLib: region-normalized layer-wise relevance propagation for 3D segmentation.

The Qt-free library under the LRPSegmentation 3D Slicer module. Layers, bottom to top:
``engine`` (pure torch: rules, tracing, region math, sliding windows); ``imaging`` (SimpleITK IO)
and ``models`` (architectures, model packages); ``pipeline`` (one case through the data flow),
``regions`` (region A as arrays), ``outputs``/``figures``; and the front ends' logic: ``slicer`` (the
3D Slicer wing), ``cli``. ``vocabulary`` names what they share (standard library only).
``phantom``, ``training`` and ``evaluation`` provide the synthetic data, the demo model and the
faithfulness checks.
"""
__version__ = "0.1.0"
