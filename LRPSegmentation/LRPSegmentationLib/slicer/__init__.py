"""The 3D Slicer wing: everything the LRPSegmentation module does on MRML, without Qt.

``LRPSegmentation.py`` (the Slicer module) only wires its widgets to these modules; the tests drive
them on a headless slicer-core scene. Each module has one concern:

- ``mrml``: numpy arrays <-> MRML nodes (volumes, segments, relevance volumes, tables, folders);
- ``logic``: Segment and Explain in three phases -- ``prepare_*`` (main thread, reads MRML),
  ``compute`` (numpy/torch only, no MRML), then ``publish`` -- and ``update_region``;
- ``compute``: the compute phase (the prediction; the explanation and composition from one traced
  forward pass), run in-process by ``logic`` and in the computation process by ``worker``;
- ``publish``: the one MRML form of a segmentation and of an explanation (node layout, names,
  table columns, the composition vector volume), written by the module and by the scene export
  alike, and found again in a loaded scene (``find_explanation``);
- ``shortcuts``: region A in one click (predicted class, the lesion at the crosshair, TP/FN/FP),
  on top of ``LRPSegmentationLib.regions``;
- ``jobs``: the job interface the module polls, cancellation, progress and the errors a job ends with;
- ``worker``: the computation process (never imports slicer or Qt) and its JSON-lines protocol;
  ``worker_client``: the module's side of it (start, requests, jobs, cancel = kill, crash = clear error);
- ``scene``: an explained case written as a ``.mrml`` scene (the demo's), with the module's layout;
- ``headless``: a Qt-free "Slicer application" on slicer-core for tests and the scene export.

This package is named after, and imports, the ``slicer`` package of 3D Slicer / slicer-core: inside
it, ``import slicer`` is that top-level package (absolute imports), never this one.
"""
