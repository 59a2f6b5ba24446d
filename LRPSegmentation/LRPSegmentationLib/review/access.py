"""Who may connect to ``lrpseg review``: safe by default.

The server binds 127.0.0.1 unless told otherwise. On any other address it refuses to start
without an access token (``--token`` or the `TOKEN_ENV` environment variable). The token is
checked on every connection: it is the secret of trame's websocket handshake (wslink rejects a
client whose ``wslink.hello`` carries another), so the page must be opened as
``http://HOST:PORT/?secret=TOKEN`` (the page then drops it from the address bar).
"""
from __future__ import annotations

import os

__all__ = ["LOCAL_HOSTS", "TOKEN_ENV", "access_token", "page_url"]

#: Addresses reachable from this computer only.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Environment variable holding the access token (keeps it out of the process list).
TOKEN_ENV = "LRPSEG_REVIEW_TOKEN"
#: The shortest token accepted: a guessable token is no protection.
MINIMUM_TOKEN_LENGTH = 16


def access_token(host: str, token: str | None = None, environ: dict[str, str] | None = None) -> str | None:
    """The token connections must present, or None (local host, no token given).

    Raises:
        ValueError: a non-local ``host`` without a token, or a token shorter than
            `MINIMUM_TOKEN_LENGTH` characters (the message says what to do).
    """
    environ = os.environ if environ is None else environ
    token = token or environ.get(TOKEN_ENV) or None
    if token is not None and len(token) < MINIMUM_TOKEN_LENGTH:
        raise ValueError(f"the access token is too short ({len(token)} characters): use at least "
                         f"{MINIMUM_TOKEN_LENGTH}, e.g. from: "
                         "python -c 'import secrets; print(secrets.token_urlsafe())'")
    if host not in LOCAL_HOSTS and token is None:
        raise ValueError(f"--host {host} makes the review reachable from other computers: give an access token "
                         f"with --token or {TOKEN_ENV} (or keep the default --host 127.0.0.1 and use SSH port "
                         "forwarding)")
    return token


def page_url(host: str, port: int, token: str | None) -> str:
    """The address to open (with the token as ``secret`` when there is one)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + ("?secret=" + token if token else "")
