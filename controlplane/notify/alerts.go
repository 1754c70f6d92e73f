package notify

import (
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/inventory"
)

// Alerts routes the server's own alerts, for teams without Prometheus: a
// secret's expiry at each lead time, and every failed rotation, go to the
// webhook its owner's route names.
type Alerts struct {
	// LeadTimes: how long before a secret expires its owner is told, once
	// for each (a restart or another replica does not tell again: the
	// delivery id is derived from the secret, its expiry and the lead).
	LeadTimes []time.Duration
	// Routes maps an owner to a webhook name; DefaultRoute is the webhook
	// of owners without one ("" tells nobody).
	Routes       map[string]string
	DefaultRoute string
	// Owner looks up a secret's owner (for failed rotations).
	Owner func(ctx context.Context, secret string) (string, error)
}

// The alerts' CloudEvents types.
const (
	AlertSecretExpiring = "io.secretplane.alert.secret_expiring"
	AlertRotationFailed = "io.secretplane.alert.rotation_failed"
)

// expiringAlert is a secret-expiry alert's data.
type expiringAlert struct {
	Secret    string    `json:"secret"`
	Owner     string    `json:"owner,omitempty"`
	ExpiresAt time.Time `json:"expires_at"`
	LeadTime  string    `json:"lead_time"`
	Expired   bool      `json:"expired,omitempty"`
}

// failedAlert is a failed rotation's alert data.
type failedAlert struct {
	Secret   string `json:"secret"`
	Owner    string `json:"owner,omitempty"`
	Rotation string `json:"rotation"`
	Detail   string `json:"detail,omitempty"`
	Trigger  string `json:"trigger,omitempty"`
}

// route is the webhook of owner's alerts ("" for none).
func (n *Notifier) route(owner string) string {
	if w, ok := n.opts.Alerts.Routes[owner]; ok && owner != "" {
		return w
	}
	return n.opts.Alerts.DefaultRoute
}

// Expiring tells owners of the secrets whose expiry is within a lead time:
// once per secret, expiry and lead, the tightest lead crossed only (a
// server started a day before expiry sends the one-day alert, not the
// thirty-day one as well).
func (n *Notifier) Expiring(ctx context.Context, secrets []inventory.Secret) {
	leads := slices.Clone(n.opts.Alerts.LeadTimes)
	slices.Sort(leads)
	if len(leads) == 0 {
		return
	}
	now := n.opts.Now()
	for _, s := range secrets {
		if s.ExpiresAt.IsZero() {
			continue
		}
		left := s.ExpiresAt.Sub(now)
		i := slices.IndexFunc(leads, func(l time.Duration) bool { return left <= l })
		if i < 0 {
			continue
		}
		hook := n.route(s.Owner)
		if hook == "" {
			continue
		}
		lead := leads[i]
		id := "expiring/" + s.Name + "/" + strconv.FormatInt(s.ExpiresAt.Unix(), 10) + "/" + lead.String()
		body, err := n.event(id, AlertSecretExpiring, s.Name, expiringAlert{Secret: s.Name, Owner: s.Owner, ExpiresAt: s.ExpiresAt.UTC(), LeadTime: lead.String(), Expired: left <= 0})
		if err == nil {
			err = n.queue(ctx, id, AlertSecretExpiring, body, []string{hook})
		}
		if err != nil {
			n.log.ErrorContext(ctx, "expiry alert could not be queued", "secret_name", s.Name, "webhook", hook, "error", err.Error())
		}
	}
}

// rotationFailed tells the secret's owner of a failed rotation.
func (n *Notifier) rotationFailed(ctx context.Context, s events.RotationStep) {
	owner := ""
	if n.opts.Alerts.Owner != nil {
		o, err := n.opts.Alerts.Owner(ctx, s.Secret)
		if err != nil {
			n.log.WarnContext(ctx, "failed rotation's owner could not be looked up; the default route is used", "secret_name", s.Secret, "error", err.Error())
		}
		owner = o
	}
	hook := n.route(owner)
	if hook == "" {
		return
	}
	id := "rotation-failed/" + s.ID
	body, err := n.event(id, AlertRotationFailed, s.Secret, failedAlert{Secret: s.Secret, Owner: owner, Rotation: s.ID, Detail: s.Detail, Trigger: s.Trigger})
	if err == nil {
		err = n.queue(ctx, id, AlertRotationFailed, body, []string{hook})
	}
	if err != nil {
		n.log.ErrorContext(ctx, "failed-rotation alert could not be queued", "secret_name", s.Secret, "webhook", hook, "error", err.Error())
	}
}
