"""``lrpseg review``'s entry point: check the access rules, build the app, serve it."""
from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

from .access import access_token, page_url

__all__ = ["run"]

MISSING_WEB = ("the review app needs the web extra: pip install 'lrpsegmentation[web]' (in a source checkout: "
               "pip install -c constraints.txt -e '.[web]')")


def run(args: Any) -> int:
    """Serve the review until interrupted. ``args``: the parsed ``lrpseg review`` options.

    Raises:
        ValueError: the access rules refuse the host/token, or the inputs are wrong (CLI: exit 2).
        ImportError: the web extra is not installed (message says how to install it).
    """
    token = access_token(args.host, args.token)  # before anything heavy: a refusal is immediate
    if importlib.util.find_spec("trame_slicer") is None:
        raise ImportError(MISSING_WEB)
    from trame.app import get_server
    from .app import ReviewApp
    from .session import CaseSource, ReviewSession

    scratch = tempfile.TemporaryDirectory(prefix="lrpseg-review-")
    model = package_folder(args, Path(scratch.name))
    source = CaseSource(args.case, list(args.sequence or []), args.reference)
    server = get_server(name="lrpseg-review", client_type="vue3")
    app = ReviewApp(server, lambda: ReviewSession(model, source, args.device or "auto"),
                    export_root=args.export_root, token=token)
    print(f"lrpseg review: serving {app.session.reference_node.GetName()} with {model.name}; open "
          f"{page_url(args.host, args.port, '<token>' if token else None)}", flush=True)
    saved = sys.argv
    # trame parses sys.argv for its own options: give it only ours.
    sys.argv = [saved[0], "--server", *(["--authKey", token] if token else [])]
    try:
        server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False,
                     disable_logging=True)
    finally:
        sys.argv = saved
        app.session.logic.shutdownWorker()
        scratch.cleanup()
    return 0


def package_folder(args: Any, scratch: Path) -> Path:
    """The ``.lrpmodel`` folder the worker loads: ``--model`` itself (default: the bundled demo model), or
    any other layout ``--model`` accepts (nnU-Net, MONAI bundle) packaged into ``scratch`` as
    ``lrpseg import`` would."""
    from ..inputs import load_model, model_options
    from ..models.metadata import PACKAGE_SUFFIX, read_description
    from ..outputs import safe_name
    from ..vocabulary import DEMO_MODEL

    path = Path(args.model) if args.model else DEMO_MODEL
    if path.name.endswith(PACKAGE_SUFFIX):
        read_description(path)  # a wrong package fails here, with its one-line message
        return path
    package, _ = load_model(path, build=False, **model_options(args.folds, args.mirroring))
    folder = scratch / f"{safe_name(package.name) or 'model'}{PACKAGE_SUFFIX}"
    package.save(folder)
    return folder
