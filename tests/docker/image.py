"""The image cnm's Docker tests and bench run: busybox and its applets, built offline."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path


def busybox_tar(directory: Path) -> Path:
    """A root filesystem of busybox and its applets, as a tar for docker import."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox not found (apt-get install busybox-static)")
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    path = directory / "busybox.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for name in ("etc", "tmp", "www"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
    return path
