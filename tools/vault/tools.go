//go:build tools

// Package tools pins the HashiCorp Vault server that the tests run. It is
// built from the Go module proxy by scripts/tools.sh into the user's cache.
package tools

import _ "github.com/hashicorp/vault"
