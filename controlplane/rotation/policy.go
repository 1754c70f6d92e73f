package rotation

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/secretplane/secretplane/controlplane/validate"
	"github.com/secretplane/secretplane/store"
)

// DefaultRenewAt is the fraction of a certificate's lifetime at which it
// is re-issued when its policy does not say.
const DefaultRenewAt = 2.0 / 3

// renewJitter is the largest share of a certificate's lifetime taken off
// its renewal point, so that certificates issued together are not all
// re-issued in the same instant. It is derived from the secret and the
// certificate's serial: every look at one certificate agrees.
const renewJitter = 0.05

// MinEvery is the shortest cadence a policy may ask for.
const MinEvery = time.Minute

// SetPolicy checks and stores a secret's rotation policy.
func (m *Manager) SetPolicy(ctx context.Context, p store.RotationPolicy) (store.RotationPolicy, error) {
	if p.Method == "" {
		p.Method = "random"
	}
	rot, ok := m.opts.Rotators[p.Method]
	if !ok {
		return store.RotationPolicy{}, fmt.Errorf("method %.64q: %w (known: %s)", p.Method, ErrUnknownMethod, m.methods())
	}
	for k, v := range p.Params {
		if err := validate.Identifier(k); err != nil {
			return store.RotationPolicy{}, fmt.Errorf("%w: parameter name: %w", ErrBadPolicy, err)
		}
		if err := validate.Text(v, 1024); err != nil {
			return store.RotationPolicy{}, fmt.Errorf("%w: parameter %s: %w", ErrBadPolicy, k, err)
		}
		if err := validate.Identifier(v); err != nil {
			return store.RotationPolicy{}, fmt.Errorf("%w: parameter %s: parameters are not values (a value is generated or issued by the rotator): %w", ErrBadPolicy, k, err)
		}
	}
	if err := rot.Check(p.Params); err != nil {
		return store.RotationPolicy{}, fmt.Errorf("%w: %w", ErrBadPolicy, err)
	}
	switch {
	case p.Every < 0 || (p.Every > 0 && p.Every < MinEvery):
		return store.RotationPolicy{}, fmt.Errorf("%w: every %s: want 0 (no cadence) or at least %s", ErrBadPolicy, p.Every, MinEvery)
	case p.RenewAt < 0 || p.RenewAt >= 1:
		return store.RotationPolicy{}, fmt.Errorf("%w: renew_at %g: want a fraction of the lifetime between 0 and 1", ErrBadPolicy, p.RenewAt)
	case p.Window != "" && p.Every == 0:
		return store.RotationPolicy{}, fmt.Errorf("%w: a window bounds a cadence: set every too", ErrBadPolicy)
	}
	if p.Window != "" {
		if _, _, err := parseWindow(p.Window); err != nil {
			return store.RotationPolicy{}, fmt.Errorf("%w: %w", ErrBadPolicy, err)
		}
	}
	if p.Method == "certificate" && p.RenewAt == 0 {
		p.RenewAt = DefaultRenewAt
	}
	if _, _, err := m.catalog.LookupBinding(ctx, p.Secret); err != nil {
		return store.RotationPolicy{}, fmt.Errorf("rotation policy of %s: %w", p.Secret, err)
	}
	return m.store.PutRotationPolicy(ctx, p)
}

// Policy returns a secret's rotation policy (store.ErrNotFound: none).
func (m *Manager) Policy(ctx context.Context, secret string) (store.RotationPolicy, error) {
	return m.store.GetRotationPolicy(ctx, secret)
}

// DeletePolicy removes a secret's rotation policy: it is rotated by hand
// only from then on.
func (m *Manager) DeletePolicy(ctx context.Context, secret string) error {
	return m.store.DeleteRotationPolicy(ctx, secret)
}

// parseWindow reads "HH:MM-HH:MM" (UTC; the end may be before the start:
// the window spans midnight) as minutes of the day.
func parseWindow(w string) (from, to int, err error) {
	a, b, ok := strings.Cut(w, "-")
	if ok {
		if from, err = minuteOfDay(a); err == nil {
			to, err = minuteOfDay(b)
		}
	}
	if !ok || err != nil || from == to {
		return 0, 0, fmt.Errorf("window %.32q: want HH:MM-HH:MM in UTC, start and end differing", w)
	}
	return from, to, nil
}

func minuteOfDay(s string) (int, error) {
	h, mm, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mi, err2 := strconv.Atoi(mm)
	if !ok || err1 != nil || err2 != nil || len(h) != 2 || len(mm) != 2 || hh > 23 || mi > 59 || hh < 0 || mi < 0 {
		return 0, errors.New("bad time")
	}
	return hh*60 + mi, nil
}

func inWindow(w string, now time.Time) bool {
	if w == "" {
		return true
	}
	from, to, err := parseWindow(w)
	if err != nil {
		return false
	}
	n := now.UTC().Hour()*60 + now.UTC().Minute()
	if from < to {
		return n >= from && n < to
	}
	return n >= from || n < to
}

// schedule starts the rotations their policies say are due, as "system".
func (m *Manager) schedule(ctx context.Context) {
	after := ""
	for ctx.Err() == nil {
		ps, err := m.store.ListRotationPolicies(ctx, after, 200)
		if err != nil {
			if ctx.Err() == nil {
				m.log.WarnContext(ctx, "rotation policies could not be listed; the schedule tries again", "error", err.Error())
			}
			return
		}
		for _, p := range ps {
			trigger, why, err := m.due(ctx, p)
			if err != nil {
				m.log.WarnContext(ctx, "rotation schedule could not decide", "secret_name", p.Secret, "error", err.Error())
				continue
			}
			if trigger == "" {
				continue
			}
			r, err := m.Start(ctx, StartRequest{Secret: p.Secret, Method: p.Method, Actor: "system", Trigger: trigger})
			if err != nil && !errors.Is(err, ErrRunning) {
				m.log.WarnContext(ctx, "scheduled rotation could not start", "secret_name", p.Secret, "trigger", trigger, "error", err.Error())
				continue
			}
			if err == nil {
				m.log.InfoContext(ctx, "scheduled rotation started", "rotation", r.ID, "secret_name", p.Secret, "trigger", trigger, "why", why)
			}
		}
		if len(ps) < 200 {
			return
		}
		after = ps[len(ps)-1].Secret
	}
}

// due says whether p's secret should be rotated now, and by which trigger.
// A cadence counts from the last completed rotation (or the policy's
// creation), so a failed one is tried again after RetryAfter, not a whole
// cadence later.
func (m *Manager) due(ctx context.Context, p store.RotationPolicy) (trigger, why string, err error) {
	now := m.opts.Now()
	recent, err := m.store.ListRotations(ctx, store.RotationQuery{Secret: p.Secret, Limit: 20})
	if err != nil {
		return "", "", err
	}
	if len(recent) > 0 {
		l := recent[0]
		if !slices.Contains(store.FinalRotationStates, l.State) {
			return "", "", nil // one at a time
		}
		if l.State != Completed && now.Sub(l.UpdateTime) < m.opts.RetryAfter {
			return "", "", nil // a failed one is not retried at once
		}
	}
	if p.RenewAt > 0 {
		renew, err := m.renewalPoint(ctx, p)
		if err != nil {
			return "", "", err
		}
		if !now.Before(renew) {
			return "expiry", "the certificate reached its renewal point " + renew.Format(time.RFC3339), nil
		}
	}
	if next := NextDue(p, LastCompleted(recent)); !next.IsZero() && !now.Before(next) && inWindow(p.Window, now) {
		return "cadence", "due since " + next.Format(time.RFC3339), nil
	}
	return "", "", nil
}

// LastCompleted is the newest completed rotation of rs (newest first), or
// nil.
func LastCompleted(rs []store.Rotation) *store.Rotation {
	for i := range rs {
		if rs[i].State == Completed {
			return &rs[i]
		}
	}
	return nil
}

// renewalPoint is when the certificate p's secret holds is due: RenewAt
// of its lifetime from NotBefore, less a jitter of up to renewJitter.
func (m *Manager) renewalPoint(ctx context.Context, p store.RotationPolicy) (time.Time, error) {
	ref, _, err := m.catalog.LookupBinding(ctx, p.Secret)
	if err != nil {
		return time.Time{}, err
	}
	// Through the cache: the schedule looks at every certificate each
	// tick, and its value changes only when it is rotated (which refreshes
	// the cache) or written outside (which the cache's refresh finds).
	cur, err := m.resolver.Get(ctx, ref)
	if err != nil {
		return time.Time{}, fmt.Errorf("read the certificate: %w", err)
	}
	defer clear(cur.Data)
	leaf, err := LeafOf(cur.Data)
	if err != nil {
		return time.Time{}, err
	}
	return RenewalPoint(p.Secret, p.RenewAt, leaf), nil
}

// RenewalPoint is when secret's certificate leaf is due for renewal under
// a policy renewing at renewAt of its lifetime: that fraction from
// NotBefore, less a jitter of up to renewJitter derived from the serial
// (stable for one certificate, different between certificates).
func RenewalPoint(secret string, renewAt float64, leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	sum := sha256.Sum256(append([]byte(secret+"\x00"), leaf.SerialNumber.Bytes()...))
	jitter := renewJitter * float64(binary.BigEndian.Uint64(sum[:8])) / float64(^uint64(0))
	fraction := renewAt - jitter
	if fraction < 0.05 {
		fraction = 0.05
	}
	return leaf.NotBefore.Add(time.Duration(float64(life) * fraction))
}

// NextDue is when p's cadence next wants a rotation, given the secret's
// last completed rotation (nil: none yet): a cadence after it, or after
// the policy was made; zero without a cadence. Failed rotations do not
// move it, so it stays in the past while they fail (RotationOverdue). The
// window may put the start later.
func NextDue(p store.RotationPolicy, lastCompleted *store.Rotation) time.Time {
	if p.Every <= 0 {
		return time.Time{}
	}
	since := p.CreateTime
	if lastCompleted != nil {
		since = lastCompleted.CreateTime
	}
	return since.Add(p.Every)
}

// LeafOf returns the leaf certificate of a tls_certificate value (PEM,
// or a JSON object with the certificate under "certificate" or
// "tls.crt"). An expired one is still returned: it is long past its
// renewal point.
func LeafOf(data []byte) (*x509.Certificate, error) {
	if trimmed := bytes.TrimSpace(data); len(trimmed) > 0 && trimmed[0] == '{' {
		var j struct {
			Certificate string `json:"certificate"`
			TLSCrt      string `json:"tls.crt"`
		}
		if err := json.Unmarshal(trimmed, &j); err != nil {
			return nil, errors.New("the secret is not a certificate: a JSON value must be an object with a certificate")
		}
		data = []byte(j.Certificate + j.TLSCrt)
	}
	for {
		var block *pem.Block
		if block, data = pem.Decode(data); block == nil {
			return nil, errors.New("the secret holds no PEM certificate")
		}
		if block.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("the secret's certificate does not parse: %w", err)
			}
			return c, nil
		}
	}
}
