#!/bin/sh
# make pulumi: the Pulumi CLI and the Python language host, built from the Go module proxy
# alone (nothing else may be downloaded here), into a cache directory keyed by their
# versions. A second run finds the directory and costs nothing. The last line of output is
# that directory, alone, so callers can `$(make -s pulumi | tail -n1)`.
# With --where it builds nothing: it prints the directory and fails if it is not built.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/build-lib.sh"

cli_version=$(version_of "$here/pulumi/go.mod" github.com/pulumi/pulumi/pkg/v3)
host_version=$(version_of "$here/languagehost/go.mod" github.com/pulumi/pulumi/sdk/v3)
[ -n "$cli_version" ] && [ -n "$host_version" ] || { echo "versions not found in tools/*/go.mod" >&2; exit 1; }

out="$cache/pulumi-$cli_version-py${host_version#v}"
if [ -x "$out/pulumi" ] && [ -x "$out/pulumi-language-python" ]; then
    echo "$out"
    exit 0
fi
# --where: only say whether it is built (the tests and the demo ask without building).
[ "${1:-}" = --where ] && { echo "$out"; exit 1; }

start_build pulumi

# The official release flags (pulumi/pulumi's .goreleaser.yml): static, no cgo, the
# version stamped in so plugins and the engine agree on it.
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
flags="-trimpath -tags osusergo,grpcnotrace"
(cd "$here/pulumi" && go build $flags \
    -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$cli_version" \
    -o "$work/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
(cd "$here/languagehost" && go build $flags \
    -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$host_version" \
    -o "$work/pulumi-language-python" github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python)

# The two small scripts the language host and the engine run, shipped in the sdk module.
sdk=$(cd "$here/languagehost" && go list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)
install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$work/"
install -m 0755 "$sdk/python/dist/pulumi-resource-pulumi-python" "$work/"

finish_build
echo "$out"
