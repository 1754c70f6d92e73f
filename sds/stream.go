package sds

import (
	"context"
	"errors"
	"io"
	"slices"
	"strconv"
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

// stream is one SDS or ADS stream's state, SotW or Delta.
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

	sub  *watch.Subscription
	res  map[string]*resource
	wake chan struct{} // a held name may exist now

	seq         uint64
	lastNonce   string
	outstanding map[string][]sent // nonce -> what that response carried
	nonces      []string          // outstanding's nonces, oldest first
	removed     []string          // Delta: removals to send
	bundleCh    <-chan struct{}
	held        int
}

// resource is one name a stream asked for.
type resource struct {
	name    string
	bundle  bool
	denied  bool // ungranted (ADS, Delta): never served
	have    *built
	fp      string // fingerprint of have's value (secrets), for the hub
	sent    string // version last sent
	nacked  string // version last NACKed: not sent again
	initial string // version the Envoy says it has (reconnect)
	held    bool   // does not exist yet
}

type sent struct{ name, version string }

// maxOutstanding bounds the responses whose acknowledgement is awaited.
const maxOutstanding = 32

func (s *Server) newStream(ctx context.Context, action string, ads, delta bool) (*stream, error) {
	id, err := identity.CallerID(ctx)
	if err != nil {
		return nil, err
	}
	st := &stream{srv: s, ctx: ctx, action: action, ads: ads, delta: delta, actor: id, actorStr: id.String(),
		sub: s.cfg.Hub.Subscribe(), res: map[string]*resource{}, wake: make(chan struct{}, 1), outstanding: map[string][]sent{}}
	if s.bundles != nil {
		st.bundleCh = s.bundles.watching()
	}
	return st, nil
}

func (st *stream) close() {
	st.sub.Close()
	for n, r := range st.res {
		if r.held {
			st.srv.unhold(n, st)
		}
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
	retry := time.NewTicker(st.srv.cfg.HoldRetry)
	defer retry.Stop()
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
			st.takeUpdates()
		case <-st.bundleCh:
			st.bundleCh = st.srv.bundles.watching()
			st.refreshBundles()
		case <-st.wake:
			st.retryHeld()
		case <-retry.C:
			if st.held > 0 {
				st.retryHeld()
			}
		}
		if err := flush(); err != nil {
			return err
		}
	}
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
	version := "unknown"
	if v != nil {
		version = strconv.Itoa(int(v.GetMajorNumber())) + "." + strconv.Itoa(int(v.GetMinorNumber())) + "." + strconv.Itoa(int(v.GetPatch()))
	}
	if st.action == sdsFetch {
		return nil
	}
	st.srv.log.InfoContext(st.ctx, "SDS stream opened", "stream", st.action, "spiffe_id", st.actorStr,
		"node_id", access.Mask(st.node), "node_cluster", access.Mask(n.GetCluster()), "envoy_version", version)
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
		if len(st.res) >= st.srv.cfg.MaxNames {
			return status.Errorf(codes.ResourceExhausted, "a stream holds at most %d secrets; open another stream", st.srv.cfg.MaxNames)
		}
		r := &resource{name: n, bundle: isBundleName(n)}
		if err := st.authorize(n, r.bundle, subscribeOp, ""); err != nil {
			if !st.ads && !st.delta {
				return err
			}
			r.denied = true
			st.res[n] = r
			if st.delta {
				st.removed = append(st.removed, n)
			}
			continue
		}
		st.res[n] = r
		if r.bundle {
			st.loadBundle(r)
		} else {
			st.sub.Add(n)
		}
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
			st.held--
		}
		delete(st.res, n)
		if !r.bundle {
			st.sub.Remove(n)
		}
	}
}

// authorize decides read on a secret (anyone authenticated may have a
// trust bundle: it holds only public keys) and audits it.
func (st *stream) authorize(name string, bundle bool, op, ref string) error {
	req := access.Request{Actor: st.actor, Action: st.action + op, Verb: policy.Read, Names: []string{name}, Field: "resource_names"}
	if bundle {
		req = access.Request{Actor: st.actor, Action: st.action + op, Anyone: true, Target: name}
	}
	call, err := st.srv.cfg.Guard.Authorize(st.ctx, req)
	if err != nil {
		return denialStatus(st.ctx, err)
	}
	call.NoteRef(ref)
	if err := call.Finish(st.ctx, audit.OK); err != nil {
		return denialStatus(st.ctx, err)
	}
	return nil
}

// takeUpdates applies the hub's pending values.
func (st *stream) takeUpdates() {
	now := st.srv.cfg.Now()
	for _, u := range st.sub.Take() {
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
			continue // the value stays as it was; the next poll tries again
		}
		b, err := st.srv.built.secret(st.ctx, u.Name, u.Ref, kind, u.Result.Fingerprint, u.Result.Data, now)
		if err != nil {
			continue // content that fails its check is never sent: the Envoy keeps its last good value
		}
		if r.held {
			r.held = false
			st.held--
			st.srv.unhold(r.name, st)
		}
		r.have, r.fp = b, u.Result.Fingerprint
	}
}

// gone: the secret is deleted or not registered yet. A Delta stream is
// told it was removed, if it had it; the name is held until it exists.
func (st *stream) gone(r *resource) {
	if st.delta && r.sent != "" {
		st.removed = append(st.removed, r.name)
	}
	r.have, r.fp, r.sent = nil, "", ""
	if !r.held {
		r.held = true
		st.held++
		st.srv.hold(r.name, st)
	}
}

// retryHeld looks up held names again.
func (st *stream) retryHeld() {
	var names []string
	for n, r := range st.res {
		if r.held && !r.bundle {
			names = append(names, n)
		}
	}
	st.sub.Add(names...)
}

func (st *stream) loadBundle(r *resource) {
	pem, _ := st.srv.bundles.get(r.name)
	if pem == nil {
		if !r.held {
			r.held = true
		}
		return
	}
	r.held = false
	td, err := spiffeid.TrustDomainFromString(r.name)
	if err != nil {
		return
	}
	sec, err := bundleResource(r.name, td.Name(), pem, st.form)
	if err != nil {
		return
	}
	a, err := pack(sec)
	if err != nil {
		return
	}
	r.have = &built{name: r.name, version: versionOf([]byte("bundle"), []byte{byte(st.form)}, pem), any: a}
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
			}
			r.initial = ""
		}
		if v == r.sent || v == r.nacked {
			continue
		}
		if err := st.authorize(r.name, r.bundle, pushOp, r.have.ref); err != nil {
			if !st.ads && !st.delta {
				return nil, err
			}
			r.denied, r.have = true, nil
			if !r.bundle {
				st.sub.Remove(r.name)
			}
			if st.delta && r.sent != "" {
				st.removed = append(st.removed, r.name)
			}
			continue
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *resource) int { return cmpString(a.name, b.name) })
	return out, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// nextNonce numbers a response and remembers what it carried.
func (st *stream) nextNonce(rs []*resource) string {
	st.seq++
	nonce := strconv.FormatUint(st.seq, 10)
	carried := make([]sent, len(rs))
	for i, r := range rs {
		carried[i] = sent{r.name, r.have.version}
	}
	st.outstanding[nonce] = carried
	st.nonces = append(st.nonces, nonce)
	if len(st.nonces) > maxOutstanding {
		delete(st.outstanding, st.nonces[0])
		st.nonces = st.nonces[1:]
	}
	st.lastNonce = nonce
	return nonce
}

// delivered records what a response carried, once it is sent.
func (st *stream) delivered(rs []*resource) {
	for _, r := range rs {
		r.sent = r.have.version
		if !r.bundle {
			st.sub.Sent(r.name, r.fp)
		}
		st.srv.cfg.Consumers.SeenNode(st.actorStr, st.node, r.name, consumers.SDS, r.sent)
	}
}

// acknowledge applies an ACK (detail nil) or NACK of the response nonce
// carried; an unknown nonce (stale, or garbage) is ignored.
func (st *stream) acknowledge(nonce string, detail *rpcstatus.Status) bool {
	carried, ok := st.outstanding[nonce]
	if !ok {
		return false
	}
	for _, c := range carried {
		r := st.res[c.name]
		if r == nil {
			continue
		}
		if detail == nil {
			st.srv.cfg.Consumers.AckedNode(st.actorStr, st.node, c.name, consumers.SDS, c.version, "")
			continue
		}
		// The Envoy rejected it: not sent again until the content changes.
		r.nacked = c.version
		var quoted [][]byte
		if r.have != nil {
			quoted = r.have.quoted
		}
		text := consumers.AckText(detail.GetMessage(), quoted...)
		if text == "" {
			text = "rejected (no error detail)"
		}
		st.srv.cfg.Consumers.AckedNode(st.actorStr, st.node, c.name, consumers.SDS, c.version, text)
		st.srv.log.WarnContext(st.ctx, "Envoy rejected an SDS resource; it keeps its previous one, and this version is not sent again", "secret_name", c.name, "version", c.version,
			"spiffe_id", st.actorStr, "node_id", access.Mask(st.node), "error_detail", text)
	}
	return true
}

func anys(rs []*resource) []*anypb.Any {
	out := make([]*anypb.Any, len(rs))
	for i, r := range rs {
		out[i] = r.have.any
	}
	return out
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
		if nonce := req.GetResponseNonce(); nonce != "" {
			if !st.acknowledge(nonce, req.GetErrorDetail()) || nonce != st.lastNonce {
				return nil // stale: what it asks was superseded by a later response
			}
		}
		names := req.GetResourceNames()
		if first {
			first = false
			if len(names) == 0 && !ads {
				return status.Error(codes.InvalidArgument, "resource_names: name the secret to fetch")
			}
			if v := req.GetVersionInfo(); v != "" && req.GetResponseNonce() == "" {
				defer func() {
					for _, r := range st.res {
						r.initial = v
					}
				}()
			}
		}
		var drop []string
		for n := range st.res {
			if !slices.Contains(names, n) {
				drop = append(drop, n)
			}
		}
		st.unsubscribe(drop)
		return st.subscribe(names)
	}
	flush := func() error {
		rs, err := st.due()
		if err != nil || len(rs) == 0 {
			return err
		}
		version := rs[0].have.version
		if len(rs) > 1 || len(st.res) > 1 {
			names := make([]string, 0, len(st.res))
			versions := map[string]string{}
			for n, r := range st.res {
				if r.have != nil {
					names = append(names, n)
					versions[n] = r.have.version
				}
			}
			slices.Sort(names)
			version = stateVersion(names, versions)
		}
		resp := &discoveryv3.DiscoveryResponse{VersionInfo: version, Resources: anys(rs), TypeUrl: SecretType, Nonce: st.nextNonce(rs)}
		if err := ss.Send(resp); err != nil {
			return err
		}
		st.delivered(rs)
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
		if first {
			first = false
			for n := range initial {
				if !slices.Contains(names, n) {
					names = append(names, n)
				}
			}
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
		if len(rs) == 0 && len(st.removed) == 0 {
			return nil
		}
		resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: SecretType, RemovedResources: st.removed}
		for _, r := range rs {
			resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: r.name, Version: r.have.version, Resource: r.have.any})
		}
		resp.Nonce = st.nextNonce(rs)
		st.removed = nil
		if err := ds.Send(resp); err != nil {
			return err
		}
		st.delivered(rs)
		return nil
	}
	return st.loop(func() (any, error) { return ds.Recv() }, handle, flush)
}
