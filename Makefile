PYTHON ?= python3
PYTEST_ARGS ?=
# What the reference backend needs from the system: bubblewrap (namespaces), fuse3
# (object-storage mounts: fusermount3, for the rclone of `make rclone`), nftables and
# iproute2 (network policy), procps and psmisc (the tests look for leftover processes), skopeo, umoci, docker-registry, busybox-static and
# apache2-utils (templates from container images, and the tests' registry and image), criu
# (doctor asks it whether snapshots could hold processes), git (the git calls run the
# sandbox's view of the host's /usr/bin/git).
DEBIAN_PACKAGES = bubblewrap fuse3 nftables iproute2 iptables procps psmisc curl \
	ca-certificates skopeo umoci docker-registry busybox-static apache2-utils criu git

.PHONY: deps install lint test demo schema bench pulumi rclone

deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(DEBIAN_PACKAGES) >/dev/null; \
	elif ! command -v bwrap >/dev/null || ! command -v fusermount3 >/dev/null; then \
		echo "install these packages first (as root): $(DEBIAN_PACKAGES)" >&2; exit 1; \
	fi

install:
	$(PYTHON) -m pip install -q -e '.[backend,dev]'

lint:
	$(PYTHON) -m ruff check pulumi_leap0 tests bench examples
	$(PYTHON) -m mypy --strict pulumi_leap0

# Installs first, so that this works on a fresh machine (and in CI, which runs exactly it);
# the Pulumi CLI too, since tests/cli need it, and rclone, since the mount tests do (in CI a
# missing CLI or rclone is a failure).
test: deps install pulumi rclone
	$(MAKE) lint
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# The Pulumi CLI and the Python language host, built from the Go module proxy into a cache
# directory keyed by their versions (tools/*/go.mod); prints that directory last. Cold: a
# few minutes and ~200 MB of binaries; cached: nothing.
pulumi:
	@sh tools/build-pulumi.sh

# rclone, for the object-storage mounts (tools/rclone: rclone's main with the S3 backend and
# the mount commands only), built from the Go module proxy into the same cache, keyed by its
# version (tools/rclone/go.mod); prints the binary's path last. Cold: 1.5-3 min; cached: nothing.
rclone:
	@sh tools/build-rclone.sh

demo: deps install pulumi
	$(PYTHON) -m pulumi_leap0.demo

schema:
	$(PYTHON) -m pulumi_leap0.schema

bench:
	for script in bench/bench_*.py; do $(PYTHON) $$script || exit 1; done
