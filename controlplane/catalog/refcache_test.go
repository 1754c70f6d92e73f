package catalog

import (
	"fmt"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/material"
	"github.com/secretplane/secretplane/controlplane/secretref"
)

// The binding cache holds at most its bound, drops expired bindings
// first, and keeps serving what it holds.
func TestRefCacheIsBounded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	c := newRefCache()
	c.max = 100
	c.now = func() time.Time { return now }
	for i := 0; i < 80; i++ {
		c.put(fmt.Sprintf("old/%d", i), secretref.Ref{}, "", material.Generic, 0)
	}
	now = now.Add(refCacheTTL)
	for i := 0; i < 1000; i++ {
		c.put(fmt.Sprintf("new/%d", i), secretref.Ref{}, "", material.Generic, 0)
		if n := c.len(); n > c.max {
			t.Fatalf("after %d puts the cache holds %d bindings; the bound is %d", i+1, n, c.max)
		}
	}
	for name := range c.entries {
		if name[:4] == "old/" {
			t.Fatalf("expired binding %s survived a sweep", name)
		}
	}
	if _, ok := c.get("new/999"); !ok {
		t.Fatal("the binding just put is not served")
	}
}
