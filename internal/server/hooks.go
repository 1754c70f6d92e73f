package server

import (
	"fmt"

	"github.com/secretplane/secretplane/controlplane/rotation/hook"
)

// newHookRotator builds the external hook rotator (method hook) from
// rotation.hooks: https hooks are called with the webhooks' TLS client
// (webhook_ca_file) and signed with the webhook key when webhook_key_file
// is set. With no hooks configured the method refuses every policy,
// saying so.
func newHookRotator(cfg Config) (*hook.Rotator, error) {
	opts := hook.Options{Hooks: cfg.Rotation.Hooks}
	if len(cfg.Rotation.Hooks) > 0 {
		var err error
		if opts.Key, err = webhookKey(cfg); err != nil {
			return nil, fmt.Errorf("rotation.hooks: %w", err)
		}
		if opts.Client, err = webhookClient(cfg); err != nil {
			return nil, fmt.Errorf("rotation.hooks: %w", err)
		}
	}
	r, err := hook.New(opts)
	if err != nil {
		return nil, fmt.Errorf("rotation.hooks: %w", err)
	}
	return r, nil
}
