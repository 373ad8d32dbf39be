#!/bin/sh
# make rclone: the rclone the runner mounts buckets with, built from the Go module proxy
# alone (tools/rclone: rclone's main with only the S3 backend and the mount commands), into
# a cache directory keyed by its version, beside the Pulumi CLI's. A second run finds the
# binary and costs nothing. The last line of output is the binary's path, alone, so callers
# can `$(make -s rclone | tail -n1)`.
# With --where it builds nothing: it prints the path and fails if it is not built.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/build-lib.sh"

version=$(version_of "$here/rclone/go.mod" github.com/rclone/rclone)
[ -n "$version" ] || { echo "rclone's version not found in tools/rclone/go.mod" >&2; exit 1; }
out="$cache/rclone-$version"
if [ -x "$out/rclone" ]; then
    echo "$out/rclone"
    exit 0
fi
[ "${1:-}" = --where ] && { echo "$out/rclone"; exit 1; }

start_build rclone
# rclone's release flags (its Makefile and bin/cross-compile.go): static, no cgo (so no
# cmount, which needs libfuse), stripped. The version stamped in, as
# rclone's releases do (else it calls itself -DEV).
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
(cd "$here/rclone" && nice go build -trimpath -ldflags "-s -X github.com/rclone/rclone/fs.Version=$version" -o "$work/rclone" .)
finish_build
echo "$out/rclone"
