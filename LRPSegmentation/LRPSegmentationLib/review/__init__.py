"""``lrpseg review``: the interactive review in the browser, a third thin front end.

The Slicer module and the command line are the other two. Like the module, the web app runs
Segment and Explain in the computation process (`slicer.worker_client.WorkerClient`) and does its
MRML work through the Qt-free Slicer wing (`slicer.module_logic.ModuleLogic`, ``publish``,
``shortcuts``, ``logic.update_region``); Slicer's own slice views and Segment Editor reach the
browser through Kitware's trame-slicer (the ``web`` extra: ``pip install '.[web]'``).

Modules, one concern each:

- ``access``: who may connect (127.0.0.1 by default; any other host needs a token);
- ``session``: one reviewer's state on the scene (`ReviewSession`), no trame;
- ``case``: the case into the scene, and Export (the files of ``lrpseg explain``);
- ``app``: the page (trame + trame-slicer) around a session;
- ``server``: ``lrpseg review``'s entry point (`server.run`).

One server holds one MRML scene: it serves one reviewer. Imports are lazy: ``import
LRPSegmentationLib.review`` needs neither trame nor slicer-core.
"""
