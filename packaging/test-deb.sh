#!/usr/bin/env bash
# Builds the Debian package around a wharf binary (default: the debug one
# the tests built), checks what it holds, and runs the packaged binary:
# --version, and `check --strict` on the packaged sample configuration.
# Usage: packaging/test-deb.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-${CARGO_TARGET_DIR:-target}/debug/wharf}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

deb=$(packaging/debian/build-deb "$binary" "$work/out")
dpkg-deb -c "$deb" | awk '{print $1, $2, $NF}' >"$work/contents"
for expected in \
  "-rwxr-xr-x root/root ./usr/bin/wharf" \
  "-rw-r----- root/root ./etc/wharf/wharf.ini" \
  "-rw-r----- root/root ./etc/wharf/userlist.txt" \
  "-rw-r--r-- root/root ./lib/systemd/system/wharf.service" \
  "-rw-r--r-- root/root ./lib/systemd/system/wharf.socket" \
  "-rw-r--r-- root/root ./usr/share/man/man1/wharf.1" \
  "-rw-r--r-- root/root ./usr/share/man/man5/wharf.ini.5" \
  "-rw-r--r-- root/root ./usr/share/doc/wharf/LICENSE-MIT" \
  "-rw-r--r-- root/root ./usr/share/doc/wharf/LICENSE-APACHE"; do
  if ! grep -qxF -- "$expected" "$work/contents"; then
    echo "test-deb: $deb lacks \"$expected\"; it holds:" >&2
    cat "$work/contents" >&2
    exit 1
  fi
done
[ "$(dpkg-deb -f "$deb" Package)" = wharf ]
dpkg-deb -f "$deb" Depends | grep -q adduser
dpkg-deb --ctrl-tarfile "$deb" | tar -x -O ./conffiles | grep -qx /etc/wharf/wharf.ini
dpkg-deb --ctrl-tarfile "$deb" | tar -x -O ./postinst | grep -q "adduser --system"
grep -q '^Type=notify$' packaging/systemd/wharf.service

root="$work/root"
dpkg-deb -x "$deb" "$root"
version=$("$root/usr/bin/wharf" --version)
package_version=$(dpkg-deb -f "$deb" Version)
want="wharf ${package_version%-*}"
if [ "$version" != "$want" ]; then
  echo "test-deb: --version says \"$version\", the package is \"$want\"" >&2
  exit 1
fi
# The sample names /etc/wharf/...: point it at the unpacked files instead
# of installing the package on this machine.
sed "s|/etc/wharf/|$root/etc/wharf/|" "$root/etc/wharf/wharf.ini" >"$work/wharf.ini"
"$root/usr/bin/wharf" check --strict "$work/wharf.ini" >/dev/null
echo "test-deb: $(basename "$deb") OK"
