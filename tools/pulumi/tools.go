//go:build tools

// The Pulumi CLI, pinned by this module's go.mod. Its own go.mod carries replace
// directives, so `go install pkg@version` refuses it; a module that requires it
// builds it (replace lines of dependencies are ignored).
package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
