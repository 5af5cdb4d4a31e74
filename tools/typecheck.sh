#!/usr/bin/env bash
# mypy (strict, pyproject.toml [tool.mypy]) on bundlerec.runtime and bundlerec.gateway. The install
# maps import names to folders (bundlerec.gateway -> gateway/, bundlerec.profile -> services/profile/
# ...) through setuptools' editable finder, which mypy cannot follow; this builds the same layout
# from symbolic links under .tools/typecheck and checks it there.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tree=.tools/typecheck
rm -rf "$tree" && mkdir -p "$tree/bundlerec"
for entry in bundlerec/*; do ln -s "$root/$entry" "$tree/bundlerec/${entry#bundlerec/}"; done
ln -s "$root/gateway" "$tree/bundlerec/gateway"
for service in profile candidate ranker; do ln -s "$root/services/$service" "$tree/bundlerec/$service"; done
cd "$tree"
exec "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" -p bundlerec.runtime -p bundlerec.gateway "$@"
