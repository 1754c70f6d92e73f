package sds

import (
	"context"
	"errors"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/secretplane/secretplane/controlplane/access"
	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/consumers"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/validate"
	"github.com/secretplane/secretplane/controlplane/watch"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/store"
)

// stream is one SDS or ADS stream's state, SotW or Delta. Every response
// carries one resource: Envoy's NACK of a response cannot say which of
// several resources it rejected, so one per response keeps a NACK to the
// resource that caused it.
type stream struct {
	srv    *Server
	ctx    context.Context
	action string // what the audit log calls the stream
	ads    bool   // many secrets on one stream: an ungranted name is skipped, not fatal
	delta  bool

	actor    spiffeid.ID
	actorStr string
	node     string // node.id, for operators only
	noted    bool   // the node was read
	form     form

	sub      *watch.Subscription
	res      map[string]*resource
	wake     chan struct{} // a held name may exist now, or a deferred update is due
	recheck  atomic.Bool   // the policies changed: decide every name again
	bundleCh <-chan struct{}
	deferred map[string]watch.Update // updates to apply again (a lookup failed)
	retrying bool                    // a wake-up for deferred is scheduled

	seq         uint64
	lastNonce   string
	outstanding map[string]sent // nonce -> what that response carried
	nonces      []string        // outstanding's nonces, oldest first
	removed     []string        // Delta: removals to send
}

// resource is one name a stream asked for.
type resource struct {
	name    string
	bundle  bool
	denied  bool // ungranted (ADS, Delta): not served unless a policy change grants it
	have    *built
	fp      string // fingerprint of have's value (secrets), for the hub
	sent    string // version last sent (or that the Envoy said it had)
	nacked  string // version last NACKed: not sent again
	initial string // version the Envoy says it has (reconnect)
	held    bool   // a secret that does not exist yet
	live    func() // releases the registry's hold of this consumer
}

// release ends the registry's hold of r's consumer, if any.
func (r *resource) release() {
	if r.live != nil {
		r.live()
		r.live = nil
	}
}

// sent is what one response carried.
type sent struct {
	name string
	b    *built
}

// maxOutstanding bounds the responses whose acknowledgement is awaited.
const maxOutstanding = 32

func (s *Server) newStream(ctx context.Context, action string, ads, delta bool) (*stream, error) {
	id, err := identity.CallerID(ctx)
	if err != nil {
		return nil, err
	}
	st := &stream{srv: s, ctx: ctx, action: action, ads: ads, delta: delta, actor: id, actorStr: id.String(),
		sub: s.cfg.Hub.Subscribe(), res: map[string]*resource{}, wake: make(chan struct{}, 1),
		outstanding: map[string]sent{}, deferred: map[string]watch.Update{}}
	if s.bundles != nil {
		st.bundleCh = s.bundles.watching()
	}
	s.track(st)
	return st, nil
}

func (st *stream) close() {
	st.srv.untrack(st)
	st.sub.Close()
	for n, r := range st.res {
		if r.held {
			st.srv.unhold(n, st)
		}
		r.release()
	}
}

func (st *stream) poke() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// loop runs the stream: one goroutine receives, this one handles requests,
// updates and sends, so sends never race.
func (st *stream) loop(recv func() (any, error), handle func(any) error, flush func() error) error {
	ctx := st.ctx
	reqs, recvErr := make(chan any), make(chan error, 1)
	go func() {
		for {
			m, err := recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-st.srv.cfg.Drain:
			return status.Error(codes.Unavailable, "the server is shutting down; reconnect")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case m := <-reqs:
			if err := handle(m); err != nil {
				return err
			}
		case <-st.sub.C():
			st.takeUpdates(st.sub.Take())
		case <-st.bundleCh:
			st.bundleCh = st.srv.bundles.watching()
			st.refreshBundles()
		case <-st.wake:
			st.retrying = false
			if err := st.onWake(); err != nil {
				return err
			}
		}
		if err := flush(); err != nil {
			return err
		}
	}
}

// onWake re-adds held names (they may exist now), applies deferred
// updates, and after a policy change decides every name again.
func (st *stream) onWake() error {
	var held []string
	for n, r := range st.res {
		if r.held && !r.denied {
			held = append(held, n)
		}
	}
	st.sub.Add(held...)
	if len(st.deferred) > 0 {
		us := make([]watch.Update, 0, len(st.deferred))
		for _, u := range st.deferred {
			us = append(us, u)
		}
		clear(st.deferred)
		st.takeUpdates(us)
	}
	if st.recheck.Swap(false) {
		return st.decideAgain()
	}
	return nil
}

// noteNode reads the node from the first request that carries one: its id
// is recorded with acknowledgements, its version picks the bundle form.
func (st *stream) noteNode(n *corev3.Node) error {
	if st.noted || n == nil {
		return nil
	}
	st.noted = true
	if err := validate.Text(n.GetId(), 256); err != nil {
		return status.Error(codes.InvalidArgument, "node.id: at most 256 printable bytes")
	}
	st.node = n.GetId()
	v := n.GetUserAgentBuildVersion().GetVersion()
	if v.GetMajorNumber() > 1 || (v.GetMajorNumber() == 1 && v.GetMinorNumber() >= 18) {
		st.form = formSPIFFE
	}
	if st.action == sdsFetch {
		return nil
	}
	version := "unknown"
	if v != nil {
		version = strconv.Itoa(int(v.GetMajorNumber())) + "." + strconv.Itoa(int(v.GetMinorNumber())) + "." + strconv.Itoa(int(v.GetPatch()))
	}
	st.srv.log.InfoContext(st.ctx, "SDS stream opened", "stream", st.action, "spiffe_id", st.actorStr,
		"node_id", access.Mask(st.node), "node_cluster", access.Mask(n.GetCluster()), "envoy_version", version)
	return nil
}

// checkRoom refuses a request that would take the stream past its bound
// on names, before any name is decided.
func (st *stream) checkRoom(adding int) error {
	if len(st.res)+adding > st.srv.cfg.MaxNames {
		return status.Errorf(codes.ResourceExhausted, "a stream holds at most %d secrets; open another stream", st.srv.cfg.MaxNames)
	}
	return nil
}

// subscribe authorises names the stream did not hold and starts serving
// the granted ones. On a stream of its own (SotW without ADS), a refused
// name ends the stream; on ADS and Delta it is skipped (Delta: removed).
func (st *stream) subscribe(names []string) error {
	for _, n := range names {
		if _, ok := st.res[n]; ok || n == "*" && st.delta {
			continue
		}
		if err := st.checkRoom(1); err != nil {
			return err
		}
		r := &resource{name: n, bundle: isBundleName(n)}
		st.res[n] = r
		if err := st.grant(r, subscribeOp); err != nil {
			return err
		}
	}
	return nil
}

// grant decides r and starts serving it, or marks it denied. The error
// ends the stream: a refusal on a stream of its own, or a decision that
// could not be made or recorded (the audit log is down).
func (st *stream) grant(r *resource, op string) error {
	denied, err := st.decide(r, op)
	switch {
	case err != nil:
		return err
	case denied:
		r.denied = true
		if st.delta {
			st.removed = append(st.removed, r.name)
		}
		return nil
	}
	r.denied = false
	if r.bundle {
		st.loadBundle(r)
	} else {
		st.sub.Add(r.name)
	}
	return nil
}

// unsubscribe stops serving names.
func (st *stream) unsubscribe(names []string) {
	for _, n := range names {
		r := st.res[n]
		if r == nil {
			continue
		}
		if r.held {
			st.srv.unhold(n, st)
		}
		r.release()
		delete(st.res, n)
		delete(st.deferred, n)
		if !r.bundle {
			st.sub.Remove(n)
		}
	}
}

// decide asks the guard for read on a secret (anyone authenticated may
// have a trust bundle: it holds only public keys), auditing the decision.
// denied reports a refusal the stream survives (ADS, Delta); an error ends
// the stream: a refusal on a stream of its own, or a failure to decide or
// record, which must never pass for a denial (Delta would remove the name).
func (st *stream) decide(r *resource, op string) (denied bool, err error) {
	req := access.Request{Actor: st.actor, Action: st.action + op, Verb: policy.Read, Names: []string{r.name}, Field: "resource_names"}
	if r.bundle {
		req = access.Request{Actor: st.actor, Action: st.action + op, Anyone: true, Target: r.name}
	}
	call, err := st.srv.cfg.Guard.Authorize(st.ctx, req)
	if err == nil {
		if r.have != nil {
			call.NoteRef(r.have.ref)
		}
		err = call.Finish(st.ctx, audit.OK)
	}
	if err == nil {
		return false, nil
	}
	serr := denialStatus(st.ctx, err)
	switch code := status.Code(serr); {
	case (code == codes.PermissionDenied || code == codes.InvalidArgument) && (st.ads || st.delta):
		return true, nil
	default:
		return false, serr
	}
}

// decideAgain decides every name again after a policy change: a new grant
// starts serving, a withdrawn one stops (Delta: removed; a stream of its
// own ends).
func (st *stream) decideAgain() error {
	for _, r := range st.res {
		wasDenied := r.denied
		denied, err := st.decide(r, subscribeOp)
		switch {
		case err != nil:
			return err
		case denied && !wasDenied:
			st.withdraw(r)
		case !denied && wasDenied:
			r.denied = false
			if r.bundle {
				st.loadBundle(r)
			} else {
				st.sub.Add(r.name)
			}
		}
	}
	return nil
}

// withdraw stops serving r: its grant is gone.
func (st *stream) withdraw(r *resource) {
	if st.delta && (r.sent != "" || r.initial != "") {
		st.removed = append(st.removed, r.name)
	}
	if r.held {
		r.held = false
		st.srv.unhold(r.name, st)
	}
	r.release()
	r.denied, r.have, r.sent, r.initial = true, nil, "", ""
	if !r.bundle {
		st.sub.Remove(r.name)
	}
}

// takeUpdates applies the hub's values.
func (st *stream) takeUpdates(us []watch.Update) {
	now := st.srv.cfg.Now()
	for _, u := range us {
		r := st.res[u.Name]
		if r == nil || r.denied || r.bundle {
			continue
		}
		if u.Gone {
			st.gone(r)
			continue
		}
		kind, err := st.srv.cfg.Catalog.LookupKind(st.ctx, u.Name)
		if errors.Is(err, store.ErrNotFound) {
			st.gone(r)
			continue
		}
		if err != nil {
			st.deferUpdate(u) // the value stays as it was; tried again shortly
			continue
		}
		b, err := st.srv.built.secret(st.ctx, u.Name, u.Ref, kind, u.Result.Fingerprint, u.Result.Data, now)
		if err != nil {
			continue // content that fails its check is never sent: the Envoy keeps its last good value
		}
		if r.held {
			r.held = false
			st.srv.unhold(r.name, st)
		}
		r.have, r.fp = b, u.Result.Fingerprint
	}
}

// deferUpdate keeps u to apply again in a second.
func (st *stream) deferUpdate(u watch.Update) {
	st.deferred[u.Name] = u
	if !st.retrying {
		st.retrying = true
		time.AfterFunc(time.Second, st.poke)
	}
}

// gone: the secret is deleted or not registered (yet). A Delta stream is
// told it was removed if it had it (or said it had, reconnecting); the
// name is held until it exists.
func (st *stream) gone(r *resource) {
	if st.delta && (r.sent != "" || r.initial != "") {
		st.removed = append(st.removed, r.name)
	}
	r.release()
	r.have, r.fp, r.sent, r.initial = nil, "", "", ""
	if !r.held {
		r.held = true
		st.srv.hold(r.name, st)
	}
}

func (st *stream) loadBundle(r *resource) {
	if b := st.srv.bundles.built(r.name, st.form); b != nil {
		r.have = b
	}
	// else: not a trust domain served here (yet): held, as any unknown name
}

func (st *stream) refreshBundles() {
	for _, r := range st.res {
		if r.bundle && !r.denied {
			st.loadBundle(r)
		}
	}
}

// due lists the resources whose content the Envoy lacks, checking each
// grant again: a withdrawn grant stops the name (a stream of its own ends,
// Delta is told it was removed).
func (st *stream) due() ([]*resource, error) {
	var out []*resource
	for _, r := range st.res {
		if r.denied || r.have == nil {
			continue
		}
		v := r.have.version
		if r.initial != "" {
			if r.initial == v { // the Envoy has it from an earlier stream
				r.sent = v
				st.srv.cfg.Consumers.SeenNode(st.actorStr, st.node, r.name, consumers.SDS, v)
				st.srv.cfg.Consumers.AckedNode(st.actorStr, st.node, r.name, consumers.SDS, v, "")
			}
			r.initial = ""
		}
		if v == r.sent || v == r.nacked {
			continue
		}
		denied, err := st.decide(r, pushOp)
		if err != nil {
			return nil, err
		}
		if denied {
			st.withdraw(r)
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// nextNonce numbers a response and remembers what it carried.
func (st *stream) nextNonce(r *resource) string {
	st.seq++
	nonce := strconv.FormatUint(st.seq, 10)
	if r != nil {
		st.outstanding[nonce] = sent{r.name, r.have}
	}
	st.nonces = append(st.nonces, nonce)
	if len(st.nonces) > maxOutstanding {
		delete(st.outstanding, st.nonces[0])
		st.nonces = st.nonces[1:]
	}
	st.lastNonce = nonce
	return nonce
}

// delivered records what a response carried, once it is sent.
func (st *stream) delivered(r *resource) {
	st.srv.pushes.Add(1)
	r.sent = r.have.version
	if !r.bundle {
		st.sub.Sent(r.name, r.fp)
	}
	st.srv.cfg.Consumers.SeenNode(st.actorStr, st.node, r.name, consumers.SDS, r.sent)
	if r.live == nil && !r.bundle {
		r.live = st.srv.cfg.Consumers.Hold(st.actorStr, st.node, r.name, consumers.SDS)
	}
}

// acknowledge applies an ACK (detail nil) or NACK of the response nonce
// carried; an unknown nonce (garbage, or beyond the ones remembered)
// reports false.
func (st *stream) acknowledge(nonce string, detail *rpcstatus.Status) bool {
	c, ok := st.outstanding[nonce]
	if !ok {
		return false
	}
	r := st.res[c.name]
	if r == nil || c.b == nil {
		return true
	}
	if detail == nil {
		st.srv.acks.Add(1)
		st.srv.cfg.Consumers.AckedNode(st.actorStr, st.node, c.name, consumers.SDS, c.b.version, "")
		return true
	}
	// The Envoy rejected it: not sent again until the content changes. Its
	// text may quote what it was sent, or what it had before.
	st.srv.nacks.Add(1)
	r.nacked = c.b.version
	quoted := c.b.quoted
	if r.have != nil && r.have != c.b {
		quoted = append(append([][]byte{}, quoted...), r.have.quoted...)
	}
	text := consumers.AckText(detail.GetMessage(), quoted...)
	if text == "" {
		text = "rejected (no error detail)"
	}
	st.srv.cfg.Consumers.AckedNode(st.actorStr, st.node, c.name, consumers.SDS, c.b.version, text)
	st.srv.log.WarnContext(st.ctx, "Envoy rejected an SDS resource; it keeps its previous one, and this version is not sent again", "secret_name", c.name, "version", c.b.version,
		"spiffe_id", st.actorStr, "node_id", access.Mask(st.node), "error_detail", text)
	return true
}

// serveSotW runs a state-of-the-world stream.
func (s *Server) serveSotW(ss interface {
	Context() context.Context
	Send(*discoveryv3.DiscoveryResponse) error
	Recv() (*discoveryv3.DiscoveryRequest, error)
}, action string, ads bool) error {
	st, err := s.newStream(ss.Context(), action, ads, false)
	if err != nil {
		return err
	}
	defer st.close()
	first := true
	handle := func(m any) error {
		req := m.(*discoveryv3.DiscoveryRequest)
		if err := checkType(req.GetTypeUrl(), ads); err != nil {
			return err
		}
		if err := st.noteNode(req.GetNode()); err != nil {
			return err
		}
		if nonce := req.GetResponseNonce(); nonce != "" && !st.acknowledge(nonce, req.GetErrorDetail()) && nonce != st.lastNonce {
			// A nonce this stream never sent (garbage, or a stream of
			// before): nothing in it is believed.
			return nil
		}
		// Every request's names are the Envoy's wish at the time it sent
		// it, later than any request before: they are applied even when
		// its nonce is stale (it never causes a resend of its own).
		names := req.GetResourceNames()
		if len(names) > s.cfg.MaxNames {
			return st.checkRoom(len(names))
		}
		want := make(map[string]bool, len(names))
		for _, n := range names {
			want[n] = true
		}
		if first {
			first = false
			if len(names) == 0 && !ads {
				return status.Error(codes.InvalidArgument, "resource_names: name the secret to fetch")
			}
		}
		var drop []string
		for n := range st.res {
			if !want[n] {
				drop = append(drop, n)
			}
		}
		st.unsubscribe(drop)
		if err := st.subscribe(names); err != nil {
			return err
		}
		// Reconnecting, the Envoy says which version it holds (of the one
		// resource its last accepted response carried: versions name
		// their resource, so it matches that one only).
		if v := req.GetVersionInfo(); v != "" && req.GetResponseNonce() == "" {
			for _, r := range st.res {
				if r.sent == "" && !r.denied {
					r.initial = v
				}
			}
		}
		return nil
	}
	flush := func() error {
		rs, err := st.due()
		if err != nil {
			return err
		}
		for _, r := range rs {
			resp := &discoveryv3.DiscoveryResponse{VersionInfo: r.have.version, Resources: []*anypb.Any{r.have.any}, TypeUrl: SecretType, Nonce: st.nextNonce(r)}
			if err := ss.Send(resp); err != nil {
				return err
			}
			st.delivered(r)
		}
		return nil
	}
	return st.loop(func() (any, error) { return ss.Recv() }, handle, flush)
}

// serveDelta runs an incremental stream.
func (s *Server) serveDelta(ds interface {
	Context() context.Context
	Send(*discoveryv3.DeltaDiscoveryResponse) error
	Recv() (*discoveryv3.DeltaDiscoveryRequest, error)
}, action string, ads bool) error {
	st, err := s.newStream(ds.Context(), action, ads, true)
	if err != nil {
		return err
	}
	defer st.close()
	first := true
	handle := func(m any) error {
		req := m.(*discoveryv3.DeltaDiscoveryRequest)
		if err := checkType(req.GetTypeUrl(), ads); err != nil {
			return err
		}
		if err := st.noteNode(req.GetNode()); err != nil {
			return err
		}
		if nonce := req.GetResponseNonce(); nonce != "" {
			st.acknowledge(nonce, req.GetErrorDetail())
		}
		st.unsubscribe(req.GetResourceNamesUnsubscribe())
		names := req.GetResourceNamesSubscribe()
		initial := req.GetInitialResourceVersions()
		if !first {
			initial = nil // only the first request of a stream says what the Envoy holds
		}
		first = false
		if len(names)+len(initial) > s.cfg.MaxNames {
			return st.checkRoom(len(names) + len(initial))
		}
		for n := range initial {
			names = append(names, n)
		}
		for _, n := range names {
			if n == "" {
				return status.Error(codes.InvalidArgument, "resource_names_subscribe: an empty name")
			}
		}
		if err := st.subscribe(names); err != nil {
			return err
		}
		for n, v := range initial {
			if r := st.res[n]; r != nil && !r.denied {
				r.initial = v
			}
		}
		return nil
	}
	flush := func() error {
		rs, err := st.due()
		if err != nil {
			return err
		}
		if len(rs) == 0 && len(st.removed) > 0 {
			rs = append(rs, nil) // a response for the removals alone
		}
		for _, r := range rs {
			resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: SecretType, RemovedResources: st.removed}
			st.removed = nil
			if r != nil {
				resp.Resources = []*discoveryv3.Resource{{Name: r.name, Version: r.have.version, Resource: r.have.any}}
			}
			resp.Nonce = st.nextNonce(r)
			if err := ds.Send(resp); err != nil {
				return err
			}
			if r != nil {
				st.delivered(r)
			}
		}
		return nil
	}
	return st.loop(func() (any, error) { return ds.Recv() }, handle, flush)
}
