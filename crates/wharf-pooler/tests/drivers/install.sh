#!/usr/bin/env bash
# Installs what the driver compatibility tests (tests/drivers.rs) need and is
# missing: psycopg 3 and asyncpg (PyPI), node-postgres (npm, from the
# committed lock file), the PostgreSQL JDBC driver (Debian), and compiles
# Jdbc.java into classes/. Idempotent and quiet: a second run installs
# nothing. Expects python3, node/npm and a JDK (javac) to be there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

say() { echo "drivers/install.sh: $*" >&2; }

# Python: the versions pinned in requirements.txt.
if ! python3 - <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
want = {}
for line in open("requirements.txt"):
    line = line.split("#")[0].strip()
    if line:
        name, ver = line.split("==")
        want[name.split("[")[0]] = ver
sys.exit(0 if all(version(n) == v for n, v in want.items()) else 1)
PY
  say "installing Python drivers: $(grep -v '^#' requirements.txt | tr '\n' ' ')"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  # Debian's own Python refuses pip installs (PEP 668) unless told; pip
  # versions that predate it ignore the variable.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check \
    --root-user-action=ignore -r requirements.txt
fi

# node-postgres: exactly the lock file's tree.
if ! node -e 'for (const m of ["pg", "pg-copy-streams"]) require.resolve(m)' 2>/dev/null \
  || ! cmp -s package-lock.json node_modules/.package-lock.json.copy; then
  say "installing node-postgres (npm ci)"
  npm ci --silent --no-audit --no-fund >/dev/null
  cp package-lock.json node_modules/.package-lock.json.copy
fi

# The PostgreSQL JDBC driver, from Debian.
jar=/usr/share/java/postgresql.jar
if [ ! -e "$jar" ]; then
  say "installing Debian package libpostgresql-jdbc-java"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpostgresql-jdbc-java >/dev/null
fi

# Jdbc.java, compiled when the class is missing or older than the source.
if [ ! -e classes/Jdbc.class ] || [ Jdbc.java -nt classes/Jdbc.class ]; then
  mkdir -p classes
  javac -nowarn -d classes -cp "$jar" Jdbc.java
fi
