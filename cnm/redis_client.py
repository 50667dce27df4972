"""Redis clients for every cnm service, from one URL.

URLs (``--redis-url`` / ``CNM_REDIS_URL``):

- ``redis://[:password@]host:port/db`` and ``rediss://...`` (TLS)
- ``unix:///path/to/redis.sock?db=0``
- ``redis+sentinel://[:password@]host:port[,host:port...]/master_name[/db]``
  (``rediss+sentinel://`` for TLS): the master is found through the sentinels
  and followed across failovers.
- ``redis+cluster://[:password@]host:port[,host:port...]`` (``rediss+cluster://``):
  Redis Cluster; the nodes listed are only the starting points.

Credentials: in the URL, or (better: an URL is easily logged) the password in
``CNM_REDIS_PASSWORD``, used when the URL carries none (:func:`with_password`);
a username (Redis ACL user) goes in the URL, ``redis://cnm@host:6379/0``.

Every client retries a command twice on a dropped connection (so a Redis
restart costs no request a stale pooled connection), with short timeouts so
that a dead Redis turns into UNAVAILABLE within seconds.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

from cnm import config, errors

MAX_CONNECTIONS = 1024

# Errors that mean "Redis cannot answer now"; they become UNAVAILABLE.
UNREACHABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)


@contextlib.contextmanager
def unavailable(doing: str, where: str = "") -> Iterator[None]:
    """Redis being unreachable, inside, becomes UNAVAILABLE saying what was being done.

    The one place where every service maps Redis failures (reason REDIS_UNAVAILABLE).
    """
    try:
        yield
    except redis.exceptions.AuthenticationError as error:
        at = f" at {where}" if where else ""
        raise errors.Unavailable(
            f"{doing}: redis{at} refused cnm's credentials ({error}): the password comes from "
            f"CNM_REDIS_PASSWORD or the URL, the ACL user from the URL",
            reason="REDIS_UNAVAILABLE") from error
    except UNREACHABLE as error:
        at = f" at {where}" if where else ""
        raise errors.Unavailable(f"{doing}: redis{at} is unavailable: {error}",
                                 reason="REDIS_UNAVAILABLE") from error


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` when it has none of its own (an empty one: unchanged)."""
    parts = urllib.parse.urlsplit(url)
    if not password or parts.password is not None:
        return url
    user, _, hosts = parts.netloc.rpartition("@")
    quoted = urllib.parse.quote(password, safe="")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{quoted}@{hosts}"))


def with_env_password(url: str) -> str:
    """``url`` with the password of ``CNM_REDIS_PASSWORD`` when it has none."""
    return with_password(url, config.env("CNM_REDIS_PASSWORD", ""))


def _host_ports(netloc: str) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = item.rpartition(":")
        hosts.append((host.strip("[]") or "127.0.0.1", int(port or 6379)))
    return hosts


def connect(
    url: str,
    timeout: float = 2.0,
    *,
    decode_responses: bool = True,
    max_connections: int = MAX_CONNECTIONS,
) -> aioredis.Redis | RedisCluster:
    """A client for any of the URL forms in the module docstring (no I/O yet).

    Timeouts are short and retries few so that a dead Redis turns into
    UNAVAILABLE within a few seconds instead of hanging the caller.
    """
    parts = urllib.parse.urlsplit(url)
    common = {
        "decode_responses": decode_responses,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
    }
    scheme = parts.scheme
    if scheme in ("redis", "rediss", "unix"):
        # Connections grow with concurrent requests; past the bound a request
        # fails fast (UNAVAILABLE) instead of queueing behind the others.
        pool = aioredis.ConnectionPool.from_url(url, max_connections=max_connections, **common)
        return aioredis.Redis.from_pool(pool)
    auth = {"username": parts.username or None, "password": parts.password or None}
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        path = [part for part in parts.path.split("/") if part]
        if not path:
            raise ValueError(
                f"sentinel URL {redact(url)!r} names no master: want .../master_name/db"
            )
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(
            _host_ports(parts.netloc),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
            **common,
        )
        return sentinel.master_for(path[0], db=db, ssl=scheme.startswith("rediss"), **auth)
    if scheme in ("redis+cluster", "rediss+cluster"):
        nodes = [ClusterNode(host, port) for host, port in _host_ports(parts.netloc)]
        return RedisCluster(startup_nodes=nodes, ssl=scheme.startswith("rediss"), **auth, **common)
    raise ValueError(
        f"unsupported Redis URL scheme {scheme!r}: want redis, rediss, unix, "
        "redis+sentinel or redis+cluster"
    )
