"""The cluster's Redis URL is a secret once it carries a password: whoever holds it can
rewrite the registry and the KV index. So it never goes where others can read it.

    TANDEM_REDIS_URL        the Redis `tandem worker` and `tandem router` use (and
                            `tandem serve` instead of starting its own), read from the
                            environment; our launchers pass it to children this way,
                            never on argv (a process's arguments are visible to every
                            user of the machine, its environment only to its owner)
    TANDEM_REDIS_PASSWORD   the password of the Redis `tandem serve` starts; a new one
                            each time when unset (set it to join more routers later)
    redact_url()            what logs and banners show: redis://:***@127.0.0.1:6379/0

`--redis-url` stays a flag for users who prefer it; a URL given there is theirs to show.
"""

from __future__ import annotations

import os
import secrets
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

REDIS_URL_ENV = "TANDEM_REDIS_URL"
REDIS_PASSWORD_ENV = "TANDEM_REDIS_PASSWORD"
MASK = "***"


def redis_url_from_env() -> str | None:
    return os.environ.get(REDIS_URL_ENV) or None


def redis_password_from_env() -> str | None:
    return os.environ.get(REDIS_PASSWORD_ENV) or None


def new_password() -> str:
    return secrets.token_urlsafe(32)


def redis_url_from(flag: str | None) -> str:
    """The URL a command runs against: its `--redis-url`, else the environment's."""
    url = flag or redis_url_from_env()
    if url is None:
        raise SystemExit(f"the cluster's Redis is needed: set {REDIS_URL_ENV} (or --redis-url)")
    return url


def redact_url(url: str) -> str:
    """`url` with its password (in the user part or a `password=` query) masked; the
    user name, host, port and database stay, as they are what one reads a log for."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL we can take apart: show none of it
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        # `user@host` alone is a user name to redis-py, but masked all the same: people
        # write `secret@host` meaning a password.
        user = userinfo.split(":", 1)[0] + ":" if ":" in userinfo else ""
        netloc = f"{user}{MASK}@{host}"
    query = urlencode(
        [(k, MASK if "pass" in k.lower() else v) for k, v in parse_qsl(parts.query, True)],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_with_password(url: str, password: str) -> str:
    """`url` with `password` as its whole user part (replacing any, masked or not)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f":{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
