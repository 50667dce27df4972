"""Named network namespaces (sandboxes), with ``ip netns`` semantics.

A sandbox NAME is a network namespace bind-mounted on /var/run/netns/NAME,
so ``ip netns exec NAME`` and every runtime see it. It is made by a
short-lived thread that unshares its network namespace, bind-mounts it and
exits; the agent's other threads never change namespace.

The agent runs as root, so it confines itself (:class:`Confinement`): it
plumbs only namespaces in the sandbox directories (its own, /var/run/netns,
any the operator adds) or a process's ``/proc/PID/ns/net``, judged on the
real path (no ``..`` or symlink leads elsewhere), and never the host's own
namespace. A caller's path is inspected without being opened for reading
first: a FIFO or a device never blocks the agent.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import os
import re
import stat
import threading
from dataclasses import dataclass

from cnm import errors

NETNS_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: its CLONE_NEW* type
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def path_of(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def _mount(source: str, target: str, flags: int) -> int:
    if _libc.mount(source.encode(), target.encode(), b"none", flags, None) == 0:
        return 0
    return ctypes.get_errno()


def _ensure_shared_dir() -> None:
    """Makes /var/run/netns a shared mount point, as ``ip netns add`` does.

    Shared, so that a namespace mounted here by the agent is seen by every
    mount namespace that shares the directory.
    """
    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    code = _mount("none", NETNS_DIR, MS_SHARED | MS_REC)
    if code == errno.EINVAL:  # not a mount point yet: bind it on itself first
        code = _mount(NETNS_DIR, NETNS_DIR, MS_BIND | MS_REC) or _mount(
            "none", NETNS_DIR, MS_SHARED | MS_REC
        )
    if code:
        raise OSError(code, f"make {NETNS_DIR} a shared mount: {os.strerror(code)}")


def _create(path: str) -> None:
    _ensure_shared_dir()
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    outcome: dict = {}

    def run() -> None:
        if _libc.unshare(CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            outcome["error"] = OSError(code, f"unshare: {os.strerror(code)}")
            return
        code = _mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", path, MS_BIND)
        if code:
            outcome["error"] = OSError(code, f"bind-mount {path}: {os.strerror(code)}")

    thread = threading.Thread(target=run, name="cnm-netns-create", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        os.unlink(path)
        raise outcome["error"]


def _delete(path: str) -> bool:
    if not os.path.exists(path):
        return False
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code != errno.EINVAL:  # EINVAL: not mounted (a leftover file)
            raise OSError(code, f"unmount {path}: {os.strerror(code)}")
    os.unlink(path)
    return True


async def create(name: str) -> str:
    """Creates sandbox ``name``; returns its path."""
    path = path_of(name)
    try:
        await asyncio.to_thread(_create, path)
    except FileExistsError as error:
        raise errors.AlreadyExists(
            f"create sandbox {name!r}: {path} exists", reason="SANDBOX_EXISTS", name=name
        ) from error
    except OSError as error:
        raise errors.Internal(f"create sandbox {name!r}: {error}") from error
    return path


async def delete(name: str) -> bool:
    """Deletes sandbox ``name``; False (quietly) when it was not there."""
    try:
        return await asyncio.to_thread(_delete, path_of(name))
    except OSError as error:
        raise errors.Internal(f"delete sandbox {name!r}: {error}") from error


# --- entering namespaces ------------------------------------------------------------

# A process's (or thread's) namespace, as the kernel names it (of any type here: one not
# of the network type is then refused for what it is).
PROC_NS = re.compile(r"/proc/[1-9][0-9]*/(task/[1-9][0-9]*/)?ns/[a-z_]+")


@dataclass(frozen=True)
class Confinement:
    """The namespaces the agent may plumb: see the module's docstring."""

    directories: tuple[str, ...]  # real paths
    host: frozenset[tuple[int, int]]  # (device, inode) of the host's namespaces

    @classmethod
    def at_start(cls, directories: tuple[str, ...] = (NETNS_DIR,),
                 host_namespaces: tuple[str, ...] = ()) -> Confinement:
        """Read once at start-up: the host's namespace is the agent's own, init's (the
        machine's, with the host's pid namespace), and any the agent acts on as its host."""
        host = set()
        for path in ("/proc/self/ns/net", "/proc/1/ns/net", *host_namespaces):
            try:
                found = os.stat(path)
            except OSError:  # /proc/1 of another pid namespace may be hidden
                continue
            host.add((found.st_dev, found.st_ino))
        return cls(tuple(dict.fromkeys(os.path.realpath(d) for d in directories)),
                   frozenset(host))

    def resolve(self, path: str) -> str:
        """The real path of namespace ``path`` if the agent may plumb it; else
        FAILED_PRECONDITION (SANDBOX_NOT_ALLOWED, SANDBOX_IS_HOST) or INVALID_ARGUMENT
        (not a network namespace)."""
        real = real_path(path)
        if not (PROC_NS.fullmatch(real) or os.path.dirname(real) in self.directories):
            raise errors.FailedPrecondition(
                f"sandbox {path!r} is not a namespace the agent may use: give a sandbox "
                f"name, /proc/PID/ns/net, or a path in {', '.join(self.directories)}",
                reason="SANDBOX_NOT_ALLOWED", path=path)
        found = check_namespace_path(real)
        if (found.st_dev, found.st_ino) in self.host:
            raise errors.FailedPrecondition(
                f"sandbox {path!r} is the host's own network namespace",
                reason="SANDBOX_IS_HOST", path=path)
        return real


def real_path(path: str) -> str:
    """``path`` with every ``..`` and symlink resolved, except /proc/PID/ns/TYPE's own
    last link (a kernel "magic" link naming the namespace, not a path)."""
    parent = os.path.realpath(os.path.dirname(path))
    candidate = os.path.join(parent, os.path.basename(path))
    return candidate if PROC_NS.fullmatch(candidate) else os.path.realpath(path)


def check_namespace_path(path: str) -> os.stat_result:
    """Stat of ``path`` if it is a network namespace; InvalidArgument otherwise. Only a
    regular file is opened, and without blocking (a FIFO would wait for a writer)."""
    try:
        found = os.stat(path)
        if not stat.S_ISREG(found.st_mode):
            raise errors.InvalidArgument(f"{path!r} is not a namespace",
                                         reason="INVALID_NAMESPACE", path=path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as error:
        raise errors.NotFound(
            f"namespace {path!r} does not exist (no such container on this host)",
            reason="NAMESPACE_NOT_FOUND", path=path
        ) from error
    except OSError as error:
        raise errors.InvalidArgument(
            f"cannot open namespace {path!r}: {error.strerror}", reason="INVALID_NAMESPACE",
            path=path,
        ) from error
    try:
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError as error:
            raise errors.InvalidArgument(
                f"{path!r} is not a namespace", reason="INVALID_NAMESPACE", path=path
            ) from error
        if kind != CLONE_NEWNET:
            raise errors.InvalidArgument(
                f"{path!r} is not a network namespace", reason="INVALID_NAMESPACE", path=path
            )
        return os.fstat(fd)
    finally:
        os.close(fd)


def _enter_and_run(path: str, action):
    """Enters namespace ``path`` and runs ``action()``: only ever in a thread made for it.

    That thread is used once and never returns to a pool, so no other work
    ever runs in the wrong namespace.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns {path}: {os.strerror(code)}")
    finally:
        os.close(fd)
    return action()


async def in_namespace(path: str, action):
    """Awaits ``action()`` run by a new thread that enters namespace ``path`` first, then dies.

    Started directly (no pool hop) and awaited without blocking the loop.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(value=None, error=None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def run() -> None:
        try:
            value = _enter_and_run(path, action)
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, value)

    threading.Thread(target=run, name="cnm-netns-enter", daemon=True).start()
    return await future
