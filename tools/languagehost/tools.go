//go:build tools

// The Python language host. Its own module
// (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3) is refused by the
// Go module proxy ("403 Forbidden ... This module version is not available", every
// version and pseudo-version), so this builds it from when it was still a package of
// the sdk/v3 module. A second module: one module cannot require two sdk/v3 versions.
package tools

import _ "github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python"
