//go:build !failpoints

package failpoint

import "context"

// Enabled reports whether this build honours failpoints.
const Enabled = false

// Hold is a no-op in a build without the "failpoints" tag.
func Hold(context.Context, string) {}
