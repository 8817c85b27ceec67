"""Java 17 or newer for the Spark tests (PySpark 4 runs on nothing older): `make java`.

Checks the Java that PySpark starts (``$JAVA_HOME/bin/java`` when JAVA_HOME is set, else
``java`` on PATH). Where it is missing or older than 17: as root with apt-get, installs
``openjdk-17-jre-headless``; otherwise says what is missing and how to install it, and exits 1.
``--check`` only checks and says, never installs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

MIN_MAJOR = 17
PACKAGE = "openjdk-17-jre-headless"
_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


def java_major(version_text: str) -> int | None:
    """The major version in ``java -version`` output, or None where it names none.

    >>> java_major('openjdk version "17.0.15" 2025-04-15')
    17
    >>> java_major('java version "1.8.0_292"')
    8
    """
    match = _VERSION.search(version_text)
    if match is None:
        return None
    major, minor = int(match.group(1)), match.group(2)
    return int(minor) if major == 1 and minor is not None else major  # "1.8" is Java 8


def java_command() -> str:
    """The java PySpark runs: ``$JAVA_HOME/bin/java`` when JAVA_HOME is set, else ``java``."""
    home = os.environ.get("JAVA_HOME")
    return os.path.join(home, "bin", "java") if home else "java"


def installed_major(java: str) -> int | None:
    """The major version of ``java``, or None when it does not run."""
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return java_major(done.stderr + done.stdout) if done.returncode == 0 else None


def describe(java: str, major: int | None) -> str:
    """What is wrong with ``java``, for a person."""
    where = f"JAVA_HOME={os.environ['JAVA_HOME']}: " if os.environ.get("JAVA_HOME") else ""
    if major is None:
        return f"{where}no working {java!r} found"
    return f"{where}{java!r} is Java {major}, older than {MIN_MAJOR}"


def how_to_install() -> str:
    return (
        f"The Spark tests need Java {MIN_MAJOR} or newer. Install it with\n"
        f"  sudo apt-get install -y {PACKAGE}      (Debian, Ubuntu)\n"
        f"or a JDK {MIN_MAJOR}+ from https://adoptium.net, and put its bin/ on PATH or set "
        "JAVA_HOME to it; then run `make java` again."
    )


def apt_install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-upgrade", PACKAGE], check=True, env=env
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Java 17 or newer for the Spark tests.")
    parser.add_argument("--check", action="store_true", help="check and say; never install")
    args = parser.parse_args(argv)
    java = java_command()
    major = installed_major(java)
    if major is not None and major >= MIN_MAJOR:
        print(f"java: {java} is Java {major}")
        return 0
    problem = describe(java, major)
    can_install = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if args.check or not can_install:
        print(f"java: {problem}.\n{how_to_install()}", file=sys.stderr)
        return 1
    print(f"java: {problem}; installing {PACKAGE} with apt-get")
    apt_install()
    major = installed_major(java)
    if major is None or major < MIN_MAJOR:
        print(
            f"java: installed {PACKAGE}, but {describe(java, major)}; point JAVA_HOME at "
            f"/usr/lib/jvm/java-{MIN_MAJOR}-openjdk-* or select it with "
            "`update-alternatives --config java`",
            file=sys.stderr,
        )
        return 1
    print(f"java: {java} is Java {major}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
