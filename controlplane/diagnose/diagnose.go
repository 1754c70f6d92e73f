// Package diagnose runs secretplane doctor's checks against a server's
// parts: every registered ref's accessibility (metadata only, never a
// value), secrets without an owner, secrets never read, grants broader
// than their holders use, AWS secrets on the default KMS key and Vault
// tokens near their end; plus the configuration checks the server runs at
// startup, handed in as Options.Static. It knows nothing of gRPC.
//
// Findings name checks, secrets, refs, backends, policies and SPIFFE IDs;
// never a value, and never a backend's own error text beyond the ref and
// the classified error (backend errors name refs, not values).
package diagnose

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/awssm"
	"github.com/secretplane/secretplane/controlplane/backend/vault"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/store"
)

// Severity is how bad a finding is.
type Severity string

// Severities.
const (
	Warning Severity = "warning" // worth fixing; doctor exits 1
	Failure Severity = "failure" // broken or unsafe; doctor exits 2
)

// Finding is one problem found.
type Finding struct {
	Check    string
	Severity Severity
	// Subject is what it is about: a secret's name, a ref, a backend, or a
	// SPIFFE ID (pattern).
	Subject string
	Message string
}

// The checks a running server adds to the static ones.
const (
	CheckRefAccessible = "ref-accessible"
	CheckOwner         = "secret-owner"
	CheckNeverRead     = "secret-never-read"
	CheckBroadGrant    = "grant-breadth"
	CheckAWSKMSKey     = "aws-kms-key"
	CheckVaultToken    = "vault-token-ttl"
)

// Checks are the running server's checks, in the order they are reported.
func Checks() []string {
	return []string{CheckRefAccessible, CheckOwner, CheckNeverRead, CheckBroadGrant, CheckAWSKMSKey, CheckVaultToken}
}

// Secrets lists the registered secrets (store.Store).
type Secrets interface {
	ListSecrets(ctx context.Context, q store.ListQuery) ([]store.Secret, error)
}

// Policies lists the stored policies (store.Store).
type Policies interface {
	ListPolicies(ctx context.Context, q store.ListQuery) ([]store.Policy, error)
}

// Consumers lists a secret's recorded consumers (consumers.Registry).
type Consumers interface {
	List(ctx context.Context, secret string) ([]store.Consumer, error)
}

// Refs routes refs to their backends (backend.Registry).
type Refs interface {
	For(ref secretref.Ref) (backend.Backend, error)
	Describe(ctx context.Context, ref secretref.Ref) (backend.Metadata, error)
}

// KeyDescriber is a backend that tells which key encrypts a secret, by
// describing it (awssm.Backend: DescribeSecret's KmsKeyId); the describe
// also proves the ref accessible.
type KeyDescriber interface {
	EncryptionKey(ctx context.Context, ref secretref.Ref) (string, error)
}

// TokenReporter is a backend whose credential is a token with a lifetime
// (vault.Backend).
type TokenReporter interface {
	TokenInfo(ctx context.Context) (vault.TokenInfo, error)
}

// Options are what the checks look at. Nil parts skip their checks.
type Options struct {
	Secrets   Secrets
	Policies  Policies
	Consumers Consumers
	Refs      Refs
	// Backends are the configured backends, for checks of their own
	// credentials (Vault's token).
	Backends []backend.Backend
	// Static runs the configuration checks the server runs at startup
	// (server.Preflight), reported first; nil: none.
	Static func(ctx context.Context) []Finding
	// Concurrency bounds the backend requests in flight (default 8);
	// Timeout bounds each (default 5s): a backend that does not answer in
	// time is a failure of that ref, and doctor goes on.
	Concurrency int
	Timeout     time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Run runs every check once and returns the findings: the static ones
// first, then by check (in Checks order) and subject. A check that could
// not run (the store unreadable) is a failure finding of its own.
func Run(ctx context.Context, o Options) []Finding {
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	var static []Finding
	if o.Static != nil {
		static = o.Static(ctx)
	}
	var found []Finding
	secrets, err := listAll(ctx, o.Secrets, func(ctx context.Context, q store.ListQuery) ([]store.Secret, error) {
		return o.Secrets.ListSecrets(ctx, q)
	},
		func(s store.Secret) string { return s.Name })
	if err != nil {
		found = append(found, Finding{Check: CheckRefAccessible, Severity: Failure, Subject: "store",
			Message: fmt.Sprintf("the registered secrets could not be listed, so no secret was checked: %v", err)})
	}
	found = append(found, checkRefs(ctx, o, secrets)...)
	found = append(found, checkOwners(secrets)...)
	used, err := consumersOf(ctx, o, secrets)
	if err != nil {
		found = append(found, Finding{Check: CheckNeverRead, Severity: Failure, Subject: "store",
			Message: fmt.Sprintf("consumers could not be listed, so reads and grants were not checked: %v", err)})
	} else {
		found = append(found, checkNeverRead(secrets, used)...)
		found = append(found, checkGrants(ctx, o, secrets, used)...)
	}
	found = append(found, checkTokens(ctx, o)...)
	order := map[string]int{}
	for i, c := range Checks() {
		order[c] = i
	}
	slices.SortStableFunc(found, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(order[a.Check], order[b.Check]), cmp.Compare(a.Subject, b.Subject))
	})
	return append(static, found...)
}

// listAll reads every page of a listing in name order.
func listAll[T any](ctx context.Context, src any, list func(context.Context, store.ListQuery) ([]T, error), name func(T) string) ([]T, error) {
	if src == nil {
		return nil, nil
	}
	const page = 500
	var out []T
	after := ""
	for {
		items, err := list(ctx, store.ListQuery{After: after, Limit: page})
		if err != nil {
			return out, err
		}
		out = append(out, items...)
		if len(items) < page {
			return out, nil
		}
		after = name(items[len(items)-1])
	}
}

// bounded runs fn with o.Timeout, returning when it does or at the
// timeout, whichever is first: a backend that ignores its context cannot
// hold doctor (its goroutine ends when the backend answers).
func bounded[T any](ctx context.Context, timeout time.Duration, fn func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := fn(ctx)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return zero, fmt.Errorf("no answer within %v: %w", timeout, backend.ErrUnavailable)
		}
		return zero, ctx.Err()
	}
}

// refResult is what describing one ref found.
type refResult struct {
	err    error
	key    string // the KMS key (aws-sm)
	hasKey bool   // the backend told its key
}

// checkRefs describes every distinct ref once, at most o.Concurrency at a
// time: failure for one that cannot be described; for AWS secrets, a
// warning when AWS's managed key encrypts it.
func checkRefs(ctx context.Context, o Options, secrets []store.Secret) []Finding {
	if o.Refs == nil {
		return nil
	}
	refs := map[string]secretref.Ref{}
	var bad []Finding
	for _, s := range secrets {
		ref, err := secretref.Parse(s.Ref)
		if err != nil {
			bad = append(bad, Finding{Check: CheckRefAccessible, Severity: Failure, Subject: s.Name,
				Message: fmt.Sprintf("its ref does not parse: %v", err)})
			continue
		}
		refs[s.Ref] = ref
	}
	results := make(map[string]refResult, len(refs))
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		slot = make(chan struct{}, o.Concurrency)
	)
	for canonical, ref := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case slot <- struct{}{}:
			case <-ctx.Done():
				mu.Lock()
				results[canonical] = refResult{err: ctx.Err()}
				mu.Unlock()
				return
			}
			defer func() { <-slot }()
			r := describe(ctx, o, ref)
			mu.Lock()
			results[canonical] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, s := range secrets {
		r, ok := results[s.Ref]
		if !ok {
			continue
		}
		switch {
		case r.err != nil:
			bad = append(bad, Finding{Check: CheckRefAccessible, Severity: Failure, Subject: s.Name,
				Message: fmt.Sprintf("ref %s cannot be described with the server's credentials (metadata only; the value was not read): %v", s.Ref, r.err)})
		case r.hasKey && awssm.IsDefaultKMSKey(r.key):
			bad = append(bad, Finding{Check: CheckAWSKMSKey, Severity: Warning, Subject: s.Name,
				Message: fmt.Sprintf("ref %s is encrypted with AWS's managed key %s (DescribeSecret names no customer KmsKeyId): use a customer managed KMS key, whose key policy and CloudTrail record you control", s.Ref, awssm.DefaultKMSKey)})
		}
	}
	return bad
}

func describe(ctx context.Context, o Options, ref secretref.Ref) refResult {
	b, err := o.Refs.For(ref)
	if err != nil {
		return refResult{err: err}
	}
	if kd, ok := b.(KeyDescriber); ok {
		key, err := bounded(ctx, o.Timeout, func(ctx context.Context) (string, error) { return kd.EncryptionKey(ctx, ref) })
		return refResult{err: err, key: key, hasKey: err == nil}
	}
	_, err = bounded(ctx, o.Timeout, func(ctx context.Context) (backend.Metadata, error) { return o.Refs.Describe(ctx, ref) })
	return refResult{err: err}
}

func checkOwners(secrets []store.Secret) []Finding {
	var out []Finding
	for _, s := range secrets {
		if strings.TrimSpace(s.Owner) == "" {
			out = append(out, Finding{Check: CheckOwner, Severity: Warning, Subject: s.Name,
				Message: "no owner: nobody is told when it expires or its rotation fails; set one with secret put --owner TEAM"})
		}
	}
	return out
}

// consumersOf lists every secret's recorded consumers, by secret.
func consumersOf(ctx context.Context, o Options, secrets []store.Secret) (map[string][]store.Consumer, error) {
	used := make(map[string][]store.Consumer, len(secrets))
	if o.Consumers == nil {
		return used, nil
	}
	for _, s := range secrets {
		cs, err := o.Consumers.List(ctx, s.Name)
		if err != nil {
			return nil, err
		}
		used[s.Name] = cs
	}
	return used, nil
}

// checkNeverRead: a secret no consumer was ever recorded for. The consumer
// registry records every identity given the secret's value through
// Resolve, Watch or SDS; the audit log is not searched.
func checkNeverRead(secrets []store.Secret, used map[string][]store.Consumer) []Finding {
	var out []Finding
	for _, s := range secrets {
		if len(used[s.Name]) == 0 {
			out = append(out, Finding{Check: CheckNeverRead, Severity: Warning, Subject: s.Name,
				Message: "never read: no identity has been given its value through Resolve, Watch or SDS (the consumer registry has no entry); delete it if nothing needs it"})
		}
	}
	return out
}

// checkGrants: a grant of read or watch on a wildcard object ("*" or
// "prefix/*") that matches registered secrets none of the identities it
// covers has ever consumed. One finding per policy and pattern, naming up
// to five of the unused secrets.
func checkGrants(ctx context.Context, o Options, secrets []store.Secret, used map[string][]store.Consumer) []Finding {
	if o.Policies == nil {
		return nil
	}
	policies, err := listAll(ctx, o.Policies, func(ctx context.Context, q store.ListQuery) ([]store.Policy, error) {
		return o.Policies.ListPolicies(ctx, q)
	},
		func(p store.Policy) string { return p.Name })
	if err != nil {
		return []Finding{{Check: CheckBroadGrant, Severity: Failure, Subject: "store", Message: fmt.Sprintf("the policies could not be listed: %v", err)}}
	}
	var out []Finding
	for _, p := range policies {
		g, err := policy.Compile(p, true)
		if err != nil {
			continue // the engine leaves an invalid policy out too
		}
		var verbs []string
		for _, v := range []policy.Verb{policy.Read, policy.Watch} {
			if slices.Contains(g.Verbs, v) {
				verbs = append(verbs, string(v))
			}
		}
		if len(verbs) == 0 {
			continue
		}
		for _, pattern := range g.Objects {
			if !strings.HasSuffix(pattern, "*") || secretref.IsPattern(pattern) {
				continue
			}
			var matched, unused []string
			for _, s := range secrets {
				if !matches(pattern, s.Name) {
					continue
				}
				matched = append(matched, s.Name)
				if !consumedBy(g.Subject, used[s.Name]) {
					unused = append(unused, s.Name)
				}
			}
			if len(unused) == 0 {
				continue
			}
			shown := unused
			more := ""
			if len(shown) > 5 {
				shown, more = shown[:5], fmt.Sprintf(" and %d more", len(unused)-5)
			}
			out = append(out, Finding{Check: CheckBroadGrant, Severity: Warning, Subject: g.Subject.String(),
				Message: fmt.Sprintf("policy %s grants %s on %q, which matches %d secrets; the identities it covers have never consumed %d of them (%s%s): grant the names in use instead of a wildcard",
					p.Name, strings.Join(verbs, " and "), pattern, len(matched), len(unused), strings.Join(shown, ", "), more)})
		}
	}
	return out
}

func matches(pattern, name string) bool {
	base, _ := strings.CutSuffix(pattern, "*")
	return strings.HasPrefix(name, base)
}

func consumedBy(subject policy.Subject, cs []store.Consumer) bool {
	for _, c := range cs {
		if id, err := spiffeid.FromString(c.Identity); err == nil && subject.Matches(id) {
			return true
		}
	}
	return false
}

// checkTokens looks at each token-holding backend's token.
func checkTokens(ctx context.Context, o Options) []Finding {
	var out []Finding
	for _, b := range o.Backends {
		tr, ok := b.(TokenReporter)
		if !ok {
			continue
		}
		subject := string(b.Scheme())
		info, err := bounded(ctx, o.Timeout, tr.TokenInfo)
		if err != nil {
			out = append(out, Finding{Check: CheckVaultToken, Severity: Failure, Subject: subject,
				Message: fmt.Sprintf("the backend's token could not be looked up (auth/token/lookup-self): %v", err)})
			continue
		}
		if f, ok := TokenFinding(info, o.Now()); ok {
			f.Subject = subject
			out = append(out, f)
		}
	}
	return out
}

// TokenFinding applies the token rule: a warning when the token's
// remaining TTL is under 10% of its creation TTL or under 24h, and it
// cannot be renewed past that: it is not renewable, or its explicit max
// TTL ends within the same bound; and the backend does not log in again
// for a new one. A token that does not expire (TTL 0) is fine.
func TokenFinding(info vault.TokenInfo, now time.Time) (Finding, bool) {
	if info.TTL <= 0 || info.Relogin {
		return Finding{}, false
	}
	bound := max(info.CreationTTL/10, 24*time.Hour)
	if info.TTL >= bound {
		return Finding{}, false
	}
	why := ""
	switch {
	case !info.Renewable:
		why = "it is not renewable"
	case info.ExplicitMaxTTL > 0 && !info.IssueTime.IsZero() && info.IssueTime.Add(info.ExplicitMaxTTL).Sub(now) < bound:
		why = fmt.Sprintf("its explicit max TTL (%v) ends in %v", info.ExplicitMaxTTL, info.IssueTime.Add(info.ExplicitMaxTTL).Sub(now).Round(time.Second))
	case info.CreationTTL > 0 && info.TTL < info.CreationTTL/10:
		// The server renews it all the time: a renewable token this far
		// below its creation TTL is capped by a max TTL (the mount's or
		// the system's) that lookup-self does not show.
		why = "renewals no longer extend it (a mount or system max TTL caps it)"
	default:
		return Finding{}, false // the server renews it
	}
	return Finding{Check: CheckVaultToken, Severity: Warning,
		Message: fmt.Sprintf("the server's Vault token expires in %v (created with a TTL of %v) and %s: the backend stops working then; issue a new token or use a login method (AppRole, certificate, JWT-SVID) (rule: under 10%% of its creation TTL or under 24h, and not renewable past it)",
			info.TTL.Round(time.Second), info.CreationTTL, why)}, true
}
