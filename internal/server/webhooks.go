package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/secretplane/secretplane/controlplane/api"
	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/notify"
	"github.com/secretplane/secretplane/store"
)

// newNotifier builds the webhooks' notifier: https receivers only (TLS
// 1.2 at least), a signing key of 16 bytes or more from a file. It
// returns the webhooks too, by name and without the key, for
// WebhookService.
func newNotifier(cfg Config, st store.Store, bus *events.Bus, source string, log *slog.Logger, owners ownerLookup) (*notify.Notifier, []api.Webhook, error) {
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
	var problems []string
	for _, owner := range slices.Sorted(maps.Keys(cfg.Alerts.Routes)) {
		if w := cfg.Alerts.Routes[owner]; cfg.Webhooks[w] == "" {
			problems = append(problems, fmt.Sprintf("alerts.routes: %s routes to webhook %q, which is not configured (webhooks)", owner, w))
		}
	}
	if w := cfg.Alerts.DefaultRoute; w != "" && cfg.Webhooks[w] == "" {
		problems = append(problems, fmt.Sprintf("alerts.default_route: webhook %q is not configured (webhooks)", w))
	}
	for _, l := range cfg.Alerts.LeadTimes {
		if l <= 0 {
			problems = append(problems, fmt.Sprintf("alerts.lead_times: %s: a lead time must be positive", l))
		}
	}
	if len(problems) > 0 {
		return nil, nil, fmt.Errorf("refusing to start:\n  - %s", strings.Join(problems, "\n  - "))
	}
	alerts := notify.Alerts{LeadTimes: cfg.Alerts.LeadTimes, Routes: cfg.Alerts.Routes, DefaultRoute: cfg.Alerts.DefaultRoute,
		Owner: func(ctx context.Context, secret string) (string, error) {
			sec, err := owners.GetSecret(ctx, secret)
			return sec.Owner, err
		}}
	return notify.New(st, bus, notify.Options{Webhooks: hooks, Source: source, Client: client, Log: log, Alerts: alerts}), shown, nil
}

// ownerLookup finds a secret's owner (catalog.Catalog).
type ownerLookup interface {
	GetSecret(ctx context.Context, name string) (store.Secret, error)
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
