#!/usr/bin/env bash
# Installs what the driver compatibility tests (tests/drivers.rs) need and is
# missing: psycopg 3 and asyncpg (PyPI, the versions in requirements.txt),
# node-postgres (npm, from the committed lock file), the PostgreSQL JDBC
# driver (Debian), and compiles Jdbc.java into classes/. Idempotent and
# quiet: a second run installs nothing. Runs as root (apt-get, pip).
set -euo pipefail
cd "$(dirname "$0")"

say() { echo "drivers/install.sh: $*" >&2; }

# Debian packages: the JDBC driver, and the toolchains if a machine lacks them.
jar=/usr/share/java/postgresql.jar
missing=()
[ -e "$jar" ] || missing+=(libpostgresql-jdbc-java)
command -v javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing missing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python drivers: exactly the versions pinned in requirements.txt.
if ! python3 - <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
ok = True
for line in open("requirements.txt"):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, want = line.split("==")
    names = [name.split("[")[0]]
    if name.endswith("[binary]"):
        names.append(names[0] + "-binary")
    ok = ok and all(version(n) == want for n in names)
sys.exit(0 if ok else 1)
PY
  say "installing Python drivers: $(grep -v '^#' requirements.txt | tr '\n' ' ')"
  # Debian's own Python refuses pip installs (PEP 668) unless told so; pip
  # versions that predate PEP 668 ignore the variable.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check \
    --root-user-action=ignore -r requirements.txt
fi

# node-postgres: exactly the lock file's tree (re-installed when it changes).
if ! node -e 'for (const m of ["pg", "pg-copy-streams"]) require.resolve(m)' 2>/dev/null \
  || ! cmp -s package-lock.json node_modules/.wharf-installed-lock.json; then
  say "installing node-postgres (npm ci)"
  npm ci --silent --no-audit --no-fund >/dev/null
  cp package-lock.json node_modules/.wharf-installed-lock.json
fi

# Jdbc.java, compiled when the class is missing or older than the source.
if [ ! -e classes/Jdbc.class ] || [ Jdbc.java -nt classes/Jdbc.class ]; then
  mkdir -p classes
  javac -nowarn -d classes -cp "$jar" Jdbc.java
fi
