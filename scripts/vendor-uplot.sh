#!/usr/bin/env bash
# Vendors uPlot (MIT) for the HTML load-test report, which inlines it: copies the pinned
# version's uPlot.iife.min.js, uPlot.min.css and LICENSE from its npm package into
# loadtest/assets/uplot/. With --check, copies nothing and fails when a committed file
# differs from the package's (CI: the vendored copy is exactly the published one).
#
#   scripts/vendor-uplot.sh            refresh the vendored files
#   scripts/vendor-uplot.sh --check    compare them with the package
#
# To move to another version, change VERSION here and in loadtest/assets/uplot/README.md,
# run this script, and look at a report (the chromium test draws one).
set -euo pipefail

VERSION=1.6.32
cd "$(dirname "$0")/.."
dest=loadtest/assets/uplot
# Package path -> vendored name.
files=(dist/uPlot.iife.min.js dist/uPlot.min.css LICENSE)

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

command -v npm >/dev/null || { echo "vendor-uplot: npm is required (apt-get install -y npm)" >&2; exit 1; }
grep -q "uplot@$VERSION" "$dest/README.md" \
  || { echo "vendor-uplot: $dest/README.md does not name uplot@$VERSION: keep them in step" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "uplot@$VERSION" >/dev/null)
tar -xzf "$tmp/uplot-$VERSION.tgz" -C "$tmp"

status=0
for file in "${files[@]}"; do
  from=$tmp/package/$file
  to=$dest/$(basename "$file")
  [ -f "$from" ] || { echo "vendor-uplot: uplot@$VERSION has no $file" >&2; exit 1; }
  if $check; then
    if ! cmp -s "$from" "$to"; then
      echo "vendor-uplot: $to differs from $file of uplot@$VERSION (run scripts/vendor-uplot.sh)" >&2
      status=1
    fi
  else
    cp "$from" "$to"
  fi
done
if $check && [ "$status" = 0 ]; then
  echo "vendor-uplot: $dest matches uplot@$VERSION"
elif ! $check; then
  echo "vendor-uplot: copied uplot@$VERSION into $dest"
fi
exit "$status"
