"""Install a Debian package the tests need (a server or a tool), when the machine lacks it.

Only as root and only where apt-get exists; elsewhere the caller reports what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def install(package: str) -> bool:
    """`apt-get install -y package`, refreshing the package lists once if the first try fails."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")

    def apt(*args: str) -> bool:
        return subprocess.run(["apt-get", *args], env=env, capture_output=True, check=False).returncode == 0

    return apt("install", "-y", package) or (apt("update") and apt("install", "-y", package))
