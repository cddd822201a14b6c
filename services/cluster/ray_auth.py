"""Ray's token authentication, set explicitly by `tandem serve` rather than left to the
installed Ray's default (none before Ray 2.5x's token auth; on for a new local cluster
since): whoever can reach a Ray without it can run any code in our workers' processes,
and so read their KV caches, the cluster token and the Redis password.

    a Ray we start    RAY_AUTH_MODE=token, unless the user set RAY_AUTH_MODE (theirs
                      wins, with a warning when it is not `token`). The token is Ray's
                      own: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token,
                      which Ray makes when missing; the dashboard asks for it too.
    RAY_ADDRESS       that cluster's mode is its owner's: set RAY_AUTH_MODE=token there
                      when it requires tokens (Ray never assumes it for an address given).

RAY_AUTH_MODE is the only switch Ray has (its `_system_config` refuses it), read from the
environment by this process and by the GCS and raylets it starts, which inherit it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def require_token_auth(starting_ray: bool) -> str | None:
    """Before `ray.init`: token authentication for a Ray we start. Returns the mode the
    Ray will run with (None: left to the cluster we join)."""
    if not starting_ray:
        return os.environ.get(AUTH_MODE_ENV)
    mode = os.environ.setdefault(AUTH_MODE_ENV, "token")
    if mode.lower() != "token":
        log.warning(
            "%s=%s: the local Ray takes any caller; anyone who reaches its ports can run "
            "code in the workers",
            AUTH_MODE_ENV,
            mode,
        )
    _reload_ray_config(expect_token=mode.lower() == "token")
    return mode


def _reload_ray_config(expect_token: bool) -> None:
    """Ray caches its configuration when imported, before we could set the variable:
    reload it, as Ray's own default does when it turns token auth on."""
    try:
        from ray._raylet import (  # type: ignore[attr-defined]  # not in Ray's stubs
            AuthenticationMode,
            Config,
            get_authentication_mode,
        )
    except ImportError:  # a Ray from before token authentication
        log.warning("this Ray has no token authentication: anyone who reaches it can run code")
        return
    Config.initialize("")
    if expect_token and get_authentication_mode() != AuthenticationMode.TOKEN:
        log.warning("Ray did not take %s=token: its token authentication is off", AUTH_MODE_ENV)
