package rotation

import (
	"context"
	"crypto/rand"

	"github.com/secretplane/secretplane/controlplane/backend"
)

// Random generates a new value: 52 characters of standard base32 (A-Z,
// 2-7) from crypto/rand, 260 bits.
type Random struct{}

// Next implements Rotator.
func (Random) Next(context.Context, backend.Value) ([]byte, error) {
	return []byte(rand.Text() + rand.Text()), nil
}
