"""Apache Kafka's broker for the dev stack: the JDK it runs on and its jars from Maven Central.

Nothing is downloaded by hand and nothing is built: ``devstack/kafka/pom.xml`` pins
``org.apache.kafka:kafka_2.13`` and Maven copies it with its runtime dependencies into a cache
directory outside the checkout, once (``make`` does it; ``npcflow stack up`` does it when the cache
is missing). After that first time the broker starts offline: the cache holds the jars and Maven's
own repository (``~/.m2``) holds everything needed to copy them again.

``python -m devstack.kafka_dist`` resolves the jars and prints where they are.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

from devstack.errors import StackError

#: The pinned broker: the newest kafka_2.13 that resolves with its dependencies on Java 17.
KAFKA_VERSION = "4.4.0"
#: The oldest Java that Kafka 4.x's broker runs on.
MIN_JAVA = 17
POM = Path(__file__).with_name("kafka") / "pom.xml"
#: Written last into a complete cache directory: a half-copied cache is never used.
_COMPLETE = ".complete"


def cache_dir() -> Path:
    """Where the jars are kept: per user and per version, shared by every checkout."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "npcflow" / f"kafka-{KAFKA_VERSION}"


@cache
def java() -> str:
    """The ``java`` to run the broker with (``$JAVA_HOME/bin/java``, else the one on PATH), checked ≥ 17."""
    home = os.environ.get("JAVA_HOME")
    candidate = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    hint = f"install a JDK >= {MIN_JAVA} (Debian/Ubuntu: `apt-get install openjdk-17-jdk-headless`) "
    hint += "or set JAVA_HOME"
    if not candidate or not Path(candidate).is_file():
        raise StackError(f"kafka: Apache Kafka needs Java >= {MIN_JAVA} and no `java` was found: {hint}")
    try:
        result = subprocess.run(
            [candidate, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"kafka: cannot run {candidate} -version ({exc}): {hint}") from exc
    found = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if found is None:
        raise StackError(f"kafka: cannot tell the version of {candidate}: {hint}")
    major = int(found.group(1))
    if major == 1:  # "1.8.0_x": Java 8 spells its version the old way
        major = int(found.group(2) or 0)
    if major < MIN_JAVA:
        raise StackError(
            f"kafka: Apache Kafka {KAFKA_VERSION} needs Java >= {MIN_JAVA}, {candidate} is {major}: {hint}"
        )
    return candidate


def jars(*, quiet: bool = True) -> Path:
    """The directory of Kafka's jars, copied from Maven Central through ``mvn`` the first time."""
    target = cache_dir()
    if (target / _COMPLETE).is_file():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            f"kafka: Apache Kafka's jars are not in {target} yet and `mvn` is not installed to fetch them: "
            "install Maven (Debian/Ubuntu: `apt-get install maven`), then run `make venv` again"
        )
    java()  # Maven needs the JDK too: say so in our words first
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".kafka-{KAFKA_VERSION}-", dir=target.parent))
    argv = [
        mvn,
        "-B",
        *(["-q"] if quiet else []),
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(argv, capture_output=quiet, text=True, check=False)
    if result.returncode != 0 or not (staging / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        tail = (result.stdout or "")[-800:] if quiet else ""
        raise StackError(f"kafka: `mvn -f {POM} dependency:copy-dependencies` failed: {tail.strip()}")
    (staging / _COMPLETE).write_text(KAFKA_VERSION + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def classpath() -> str:
    """The JVM classpath of the broker: every jar in the cache (Java expands the ``*``)."""
    return str(jars() / "*")


def version() -> str:
    """``Apache Kafka 4.4.0``: what ``stack check`` reports, read from the jar the cache holds."""
    found = sorted(jars().glob("kafka_2.13-*.jar"))
    if not found:
        return "Apache Kafka (unknown version)"
    return "Apache Kafka " + found[0].name.removeprefix("kafka_2.13-").removesuffix(".jar")


def broker_identity(started: bool) -> dict[str, str]:
    """``{"broker": "Apache Kafka 4.4.0"}`` for a broker the stack started, ``external`` otherwise.

    ``started``: whether the stack started the broker (it did not when ``NPCFLOW_KAFKA_BOOTSTRAP``
    named one); an external broker's version is not asked for.
    """
    return {"broker": version() if started else "external"}


def main() -> int:
    """Resolve the jars and print where they are."""
    try:
        java()
        if not (cache_dir() / _COMPLETE).is_file():
            print(
                f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central into {cache_dir()} (once)",
                flush=True,
            )
        print(jars())
    except StackError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
