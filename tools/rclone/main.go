// The rclone the runner mounts buckets with: rclone's own main (cmd.Main) with only what a
// mount needs, the S3 backend, the two FUSE front-ends and lsf (the runner lists a bucket
// before it mounts it), instead of every backend and command rclone has. A cold build took
// 1.5-3 min on 2 shared cores (75 s of CPU), a 30 MB binary; and a remote (the runner
// defines it in rclone's environment) could not name another backend even if one tried.
package main

import (
	_ "github.com/rclone/rclone/backend/s3"
	"github.com/rclone/rclone/cmd"
	_ "github.com/rclone/rclone/cmd/lsf" // the check that an endpoint answers before mounting
	_ "github.com/rclone/rclone/cmd/mount"
	_ "github.com/rclone/rclone/cmd/mount2"
	_ "github.com/rclone/rclone/cmd/version"
)

func main() {
	cmd.Main()
}
