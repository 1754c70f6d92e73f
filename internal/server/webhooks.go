package server

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sort"

	"github.com/secretplane/secretplane/controlplane/api"
	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/notify"
	"github.com/secretplane/secretplane/store"
)

// newNotifier builds the webhooks' notifier: https receivers only (TLS
// 1.2 at least), a signing key of 16 bytes or more from a file. It
// returns the webhooks too, by name and without the key, for
// WebhookService.
func newNotifier(cfg Config, st store.Store, bus *events.Bus, source string, log *slog.Logger) (*notify.Notifier, []api.Webhook, error) {
	var (
		hooks []notify.Webhook
		shown []api.Webhook
	)
	if len(cfg.Webhooks) > 0 {
		key, err := webhookKey(cfg)
		switch {
		case err != nil:
			return nil, nil, fmt.Errorf("webhooks need a signing key: %w", err)
		case key == nil:
			return nil, nil, fmt.Errorf("webhook_key_file: webhooks need a signing key")
		}
		names := make([]string, 0, len(cfg.Webhooks))
		for n := range cfg.Webhooks {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			u, err := url.Parse(cfg.Webhooks[n])
			if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
				return nil, nil, fmt.Errorf("webhooks: %s must be an https:// URL without credentials", n)
			}
			hooks = append(hooks, notify.Webhook{Name: n, URL: u.String(), Key: key})
			shown = append(shown, api.Webhook{Name: n, URL: u.String()})
		}
	}
	client, err := webhookClient(cfg)
	if err != nil {
		return nil, nil, err
	}
	return notify.New(st, bus, notify.Options{Webhooks: hooks, Source: source, Client: client, Log: log}), shown, nil
}

// webhookKey reads the HMAC key webhooks (and https rotation hooks) are
// signed with: at least 16 bytes, from webhook_key_file; nil when the
// setting is empty.
func webhookKey(cfg Config) ([]byte, error) {
	if cfg.WebhookKeyFile == "" {
		return nil, nil
	}
	raw, err := os.ReadFile(cfg.WebhookKeyFile)
	if err != nil {
		return nil, fmt.Errorf("webhook_key_file: %w", err)
	}
	key := bytes.TrimSpace(raw)
	if len(key) < 16 {
		return nil, fmt.Errorf("webhook_key_file %s: the key must be at least 16 bytes", cfg.WebhookKeyFile)
	}
	return key, nil
}

// webhookClient is the HTTP client of webhooks and https rotation hooks:
// TLS 1.2 at least, receivers' certificates signed by webhook_ca_file's
// CAs when it is set, the system's otherwise.
func webhookClient(cfg Config) (*http.Client, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.WebhookCAFile != "" {
		pem, err := os.ReadFile(cfg.WebhookCAFile)
		if err != nil {
			return nil, fmt.Errorf("webhook_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("webhook_ca_file %s: no PEM certificate", cfg.WebhookCAFile)
		}
		tlsCfg.RootCAs = pool
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment}}, nil
}
