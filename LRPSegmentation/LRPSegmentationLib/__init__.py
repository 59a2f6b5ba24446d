"""LRPSegmentationLib: region-normalized layer-wise relevance propagation for 3D segmentation.

The Qt-free library under the LRPSegmentation 3D Slicer module. Layers, bottom to top:
``engine`` (pure torch) → ``models`` → ``imaging`` → ``pipeline`` → ``mrml`` / ``cli``.
"""
__version__ = "0.1.0"
