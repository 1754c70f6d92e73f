//go:build failpoints

package failpoint

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
)

// Enabled reports whether this build honours failpoints.
const Enabled = true

// Hold waits until ctx ends when name is listed in SECRETPLANE_FAILPOINTS.
func Hold(ctx context.Context, name string) {
	if !slices.Contains(strings.Split(os.Getenv(Env), ","), name) {
		return
	}
	fmt.Fprintf(os.Stderr, "failpoint %s reached\n", name)
	<-ctx.Done()
}
