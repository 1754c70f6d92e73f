// Package notify tells dependents what happened: each rotation step on the
// core's event bus becomes a CloudEvents 1.0 JSON event, queued in the
// store for every webhook before it is attempted (so a restart loses
// none), POSTed signed with HMAC-SHA256, retried with backoff and
// dead-lettered after a bound. Delivery runs apart from rotations and
// requests: a slow or failing receiver delays neither. Events carry
// names, versions and fingerprints, never a value.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2/event"

	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/store"
)

// Signature is the header carrying "t=<unix seconds>,v1=<hex HMAC-SHA256
// of "<t>.<body>">": a receiver recomputes it with the shared key, and
// refuses old timestamps to stop replays.
const Signature = "X-Secretplane-Signature"

// Webhook is a receiver.
type Webhook struct {
	Name string
	URL  string
	Key  []byte // HMAC key; never logged
}

// Store is the outbox (store.DeliveryStore).
type Store interface {
	store.DeliveryStore
}

// Options tune a Notifier. Zero values take the defaults.
type Options struct {
	Webhooks    []Webhook
	Source      string // the CloudEvents source, e.g. the server's SPIFFE ID
	Client      *http.Client
	MaxAttempts int           // then dead; default 8
	Backoff     time.Duration // first retry; doubles; default 1s
	MaxBackoff  time.Duration // default 5m
	Poll        time.Duration // how often due deliveries are looked for; default 1s
	Timeout     time.Duration // one attempt; default 10s
	Log         *slog.Logger
	Now         func() time.Time
	// Alerts routes the server's own alerts (expiry, failed rotations) to
	// owners' webhooks.
	Alerts Alerts
}

// Notifier queues and delivers events.
type Notifier struct {
	store Store
	bus   *events.Bus
	opts  Options
	log   *slog.Logger
	hooks map[string]Webhook
	wake  chan struct{}

	deadMu sync.Mutex
	dead   map[string]uint64 // deliveries given up, by webhook
}

// DeadLetters counts, by webhook, the deliveries this process gave up.
func (n *Notifier) DeadLetters() map[string]uint64 {
	n.deadMu.Lock()
	defer n.deadMu.Unlock()
	out := make(map[string]uint64, len(n.dead))
	for k, v := range n.dead {
		out[k] = v
	}
	return out
}

// New returns a notifier; call Run.
func New(s Store, bus *events.Bus, opts Options) *Notifier {
	if opts.Client == nil {
		opts.Client = &http.Client{}
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 8
	}
	if opts.Backoff <= 0 {
		opts.Backoff = time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Minute
	}
	if opts.Poll <= 0 {
		opts.Poll = time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Source == "" {
		opts.Source = "secretplane"
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hooks := map[string]Webhook{}
	for _, w := range opts.Webhooks {
		hooks[w.Name] = w
	}
	return &Notifier{store: s, bus: bus, opts: opts, log: log, hooks: hooks, wake: make(chan struct{}, 1), dead: map[string]uint64{}}
}

// Run queues events and delivers them until ctx ends.
func (n *Notifier) Run(ctx context.Context) {
	if len(n.hooks) == 0 {
		<-ctx.Done()
		return
	}
	sub := n.bus.Subscribe("notify", 0)
	defer sub.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { n.deliverLoop(ctx) })
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-sub.C():
			if step, ok := e.(events.RotationStep); ok {
				if err := n.enqueue(ctx, step); err != nil {
					n.log.ErrorContext(ctx, "webhook event could not be queued", "rotation", step.ID, "error", err.Error())
				}
				if step.Step == "failed" {
					n.rotationFailed(ctx, step)
				}
			}
		}
	}
}

// payload is a rotation step as dependents see it.
type payload struct {
	Rotation    string `json:"rotation"`
	Secret      string `json:"secret"`
	State       string `json:"state"`
	Step        string `json:"step"`
	FromVersion string `json:"from_version"`
	ToVersion   string `json:"to_version,omitempty"`
	Detail      string `json:"detail,omitempty"`
	Actor       string `json:"actor"`
	Emergency   bool   `json:"emergency,omitempty"`
}

// EventType is a rotation step's CloudEvents type.
func EventType(step string) string { return "io.secretplane.rotation." + step }

func (n *Notifier) enqueue(ctx context.Context, s events.RotationStep) error {
	id := make([]byte, 12)
	_, _ = rand.Read(id)
	body, err := n.event(hex.EncodeToString(id), EventType(s.Step), s.Secret, payload{Rotation: s.ID, Secret: s.Secret, State: s.State, Step: s.Step,
		FromVersion: s.FromVersion, ToVersion: s.ToVersion, Detail: s.Detail, Actor: s.Actor, Emergency: s.Emergency})
	if err != nil {
		return err
	}
	names := make([]string, 0, len(n.hooks))
	for name := range n.hooks {
		names = append(names, name)
	}
	return n.queue(ctx, hex.EncodeToString(id), EventType(s.Step), body, names)
}

// event builds a CloudEvent's JSON.
func (n *Notifier) event(id, typ, subject string, data any) ([]byte, error) {
	ev := cloudevents.New()
	ev.SetID(id)
	ev.SetSource(n.opts.Source)
	ev.SetType(typ)
	ev.SetSubject(subject)
	ev.SetTime(n.opts.Now())
	if err := ev.SetData("application/json", data); err != nil {
		return nil, fmt.Errorf("build event: %w", err)
	}
	if err := ev.Validate(); err != nil {
		return nil, fmt.Errorf("build event: %w", err)
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	return body, nil
}

// queue records an event's delivery to each named webhook (one already
// queued under the same id is left as it is) and wakes the sender.
func (n *Notifier) queue(ctx context.Context, id, typ string, body []byte, webhooks []string) error {
	now := n.opts.Now()
	ds := make([]store.Delivery, 0, len(webhooks))
	for _, name := range webhooks {
		ds = append(ds, store.Delivery{ID: id + "/" + name, Webhook: name, EventType: typ, Body: body, NextAttempt: now})
	}
	if err := n.store.EnqueueDeliveries(ctx, ds); err != nil {
		return err
	}
	select {
	case n.wake <- struct{}{}:
	default:
	}
	return nil
}

func (n *Notifier) deliverLoop(ctx context.Context) {
	t := time.NewTicker(n.opts.Poll)
	defer t.Stop()
	for {
		due, err := n.store.DueDeliveries(ctx, n.opts.Now(), 100)
		if err != nil && ctx.Err() == nil {
			n.log.WarnContext(ctx, "due webhook deliveries could not be read", "error", err.Error())
		}
		for _, d := range due {
			n.attempt(ctx, d)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.wake:
		}
	}
}

// attempt POSTs d once and records how it went.
func (n *Notifier) attempt(ctx context.Context, d store.Delivery) {
	w, ok := n.hooks[d.Webhook]
	d.Attempts++
	var err error
	if !ok {
		err = fmt.Errorf("webhook %s is no longer configured", d.Webhook)
		d.Attempts = n.opts.MaxAttempts
	} else {
		err = n.post(ctx, w, d.Body)
	}
	switch {
	case err == nil:
		d.State, d.LastError = "delivered", ""
	case d.Attempts >= n.opts.MaxAttempts:
		d.State, d.LastError = "dead", err.Error()
		n.deadMu.Lock()
		n.dead[d.Webhook]++
		n.deadMu.Unlock()
		n.log.ErrorContext(ctx, "webhook delivery given up (dead-lettered)", "webhook", d.Webhook, "delivery", d.ID, "attempts", d.Attempts, "error", err.Error())
	default:
		backoff := min(n.opts.Backoff<<(d.Attempts-1), n.opts.MaxBackoff)
		d.State, d.LastError, d.NextAttempt = "pending", err.Error(), n.opts.Now().Add(backoff)
		n.log.WarnContext(ctx, "webhook delivery failed; retrying", "webhook", d.Webhook, "delivery", d.ID, "attempt", d.Attempts, "retry_in", backoff, "error", err.Error())
	}
	if uerr := n.store.UpdateDelivery(context.WithoutCancel(ctx), d); uerr != nil {
		n.log.ErrorContext(ctx, "webhook delivery result could not be recorded", "delivery", d.ID, "error", uerr.Error())
	}
}

func (n *Notifier) post(ctx context.Context, w Webhook, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	req.Header.Set("Content-Type", "application/cloudevents+json")
	req.Header.Set(Signature, Sign(w.Key, n.opts.Now(), body))
	resp, err := n.opts.Client.Do(req)
	if err != nil {
		// net/http's *url.Error quotes the whole URL, whose query may
		// carry the receiver's token: keep what went wrong, not where.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return fmt.Errorf("POST: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST answered HTTP %d", resp.StatusCode)
	}
	return nil
}

// Sign computes the Signature header for body sent at t.
func Sign(key []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(ts + "."))
	m.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(m.Sum(nil))
}
