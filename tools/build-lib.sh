# Shared by tools/build-*.sh (sourced, POSIX sh): where the builds are cached, how a
# version is read from a wrapper module's go.mod, and a build directory that becomes the
# cached one only when complete.

# The version of module $2 that go.mod $1 requires (the versions live once, there).
version_of() { awk -v m="$2" '$1 == m { print $2 } $1 == "require" && $2 == m { print $3 }' "$1"; }

cache=${PULUMI_LEAP0_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pulumi-leap0}

# start_build WHAT: needs $out (the final directory). Built beside it and renamed into
# place by finish_build, so an interrupted build never leaves a directory that looks
# complete.
start_build() {
    command -v go >/dev/null || { echo "make $1 needs Go (1.26) and the Go module proxy" >&2; exit 1; }
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/.build-XXXXXX")
    chmod 0755 "$work"
    trap 'rm -rf "$work"' EXIT INT TERM
}

finish_build() {
    rm -rf "$out"
    mv "$work" "$out"
    trap - EXIT INT TERM
}
