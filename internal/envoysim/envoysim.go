// Package envoysim is an SDS client that behaves as Envoy 1.3x does, for
// tests and load drivers (no Envoy binary can be had here). Without ADS it
// opens one state-of-the-world subscription per secret; with ADS, one
// stream for every secret; over Delta, one incremental stream with the
// initial versions it holds on reconnect. It ACKs a response with its
// version and nonce and NACKs (error_detail set, the version it last
// accepted) one that breaks Envoy's rules: a SotW response of its own
// stream must carry exactly the requested resource, and no response may
// carry a resource it did not ask for or content it cannot use.
package envoysim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
)

// SecretType is the SDS type URL.
const SecretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// Mode is how the client subscribes.
type Mode int

// The protocol variants Envoy speaks.
const (
	SotW     Mode = iota // one SecretDiscoveryService.StreamSecrets per secret
	Delta                // one SecretDiscoveryService.DeltaSecrets for all
	ADS                  // one AggregatedDiscoveryService SotW stream
	DeltaADS             // one AggregatedDiscoveryService Delta stream
	numModes
)

// Modes lists every mode.
var Modes = []Mode{SotW, Delta, ADS, DeltaADS}

func (m Mode) String() string {
	return [...]string{"sotw", "delta", "ads", "delta-ads"}[m]
}

// Options shape the client.
type Options struct {
	Mode    Mode
	NodeID  string
	Cluster string
	// Version is the Envoy version the node reports (user_agent_build_version).
	Major, Minor uint32
	// Reject, when set, is asked about every resource after Envoy's own
	// checks; an error NACKs the response with its text.
	Reject func(name string, s *tlsv3.Secret) error
}

// Applied is a secret the client holds.
type Applied struct {
	Name    string
	Version string // the resource's (Delta) or response's (SotW) version
	Secret  *tlsv3.Secret
	At      time.Time
}

// Event is what the client did with a response (or a stream's end).
type Event struct {
	Names    []string // resources the response carried
	Removed  []string // Delta removals
	Version  string
	Nonce    string
	Accepted bool
	Reason   string // why it was rejected
	Err      error  // the stream ended with this
	At       time.Time
}

// Client is one simulated Envoy.
type Client struct {
	conn grpc.ClientConnInterface
	opts Options

	mu      sync.Mutex
	names   []string
	secrets map[string]Applied
	events  chan Event
	streams map[string]context.CancelFunc // SotW: one per name; others: "" for the one stream
	send    chan []string                 // ADS/Delta: names to (un)subscribe, handed to the stream
	errs    map[string]error
	wg      sync.WaitGroup
	closed  bool
	// adsAccepted is the version_info of the last ADS response accepted.
	adsAccepted string
	acks        int
	nacks       int
	received    int
}

// New returns a client over conn.
func New(conn grpc.ClientConnInterface, opts Options) *Client {
	if opts.NodeID == "" {
		opts.NodeID = "envoy-sim"
	}
	if opts.Major == 0 {
		opts.Major, opts.Minor = 1, 32
	}
	return &Client{conn: conn, opts: opts, secrets: map[string]Applied{}, events: make(chan Event, 1024), streams: map[string]context.CancelFunc{}, errs: map[string]error{}}
}

// Events delivers every response outcome; it is buffered, and events are
// dropped when nobody reads.
func (c *Client) Events() <-chan Event { return c.events }

func (c *Client) emit(e Event) {
	e.At = time.Now()
	select {
	case c.events <- e:
	default:
	}
}

func (c *Client) node() *corev3.Node {
	return &corev3.Node{Id: c.opts.NodeID, Cluster: c.opts.Cluster, UserAgentName: "envoy",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{Version: &typev3.SemanticVersion{MajorNumber: c.opts.Major, MinorNumber: c.opts.Minor}}}}
}

// Subscribe asks for names (added to those already asked for).
func (c *Client) Subscribe(ctx context.Context, names ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range names {
		if !slices.Contains(c.names, n) {
			c.names = append(c.names, n)
		}
	}
	switch c.opts.Mode {
	case SotW:
		for _, n := range names {
			if _, ok := c.streams[n]; !ok {
				sctx, cancel := context.WithCancel(ctx)
				c.streams[n] = cancel
				c.wg.Add(1)
				go func() { defer c.wg.Done(); c.end(n, c.runSotW(sctx, []string{n}, nil)) }()
			}
		}
	default:
		if _, ok := c.streams[""]; !ok {
			sctx, cancel := context.WithCancel(ctx)
			c.streams[""] = cancel
			send := make(chan []string, 64)
			c.send = send
			initial := c.versionsLocked()
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				var err error
				if c.opts.Mode == ADS {
					err = c.runSotW(sctx, nil, send)
				} else {
					err = c.runDelta(sctx, initial, send)
				}
				c.end("", err)
			}()
		}
		select {
		case c.send <- slices.Clone(c.names):
		default:
		}
	}
}

// Unsubscribe stops asking for names (ADS and Delta; SotW closes their streams).
func (c *Client) Unsubscribe(names ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.names = slices.DeleteFunc(c.names, func(n string) bool { return slices.Contains(names, n) })
	for _, n := range names {
		delete(c.secrets, n)
		if cancel, ok := c.streams[n]; ok && c.opts.Mode == SotW {
			cancel()
			delete(c.streams, n)
		}
	}
	if c.send != nil {
		select {
		case c.send <- slices.Clone(c.names):
		default:
		}
	}
}

// Reconnect drops the streams and opens them again, as Envoy does after a
// connection loss: SotW with the version it holds, Delta with its
// initial_resource_versions.
func (c *Client) Reconnect(ctx context.Context) {
	c.mu.Lock()
	for _, cancel := range c.streams {
		cancel()
	}
	c.streams = map[string]context.CancelFunc{}
	c.errs = map[string]error{}
	names := slices.Clone(c.names)
	c.mu.Unlock()
	c.wg.Wait()
	c.Subscribe(ctx, names...)
}

func (c *Client) end(key string, err error) {
	c.mu.Lock()
	c.errs[key] = err
	c.mu.Unlock()
	if err != nil {
		c.emit(Event{Err: err, Names: []string{key}})
	}
}

// StreamErr is how the stream of name (SotW) or the one stream ended; nil
// while it runs.
func (c *Client) StreamErr(name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opts.Mode != SotW {
		name = ""
	}
	return c.errs[name]
}

// Get returns the secret the client holds as name.
func (c *Client) Get(name string) (Applied, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.secrets[name]
	return a, ok
}

// Counts are the responses received, ACKed and NACKed.
func (c *Client) Counts() (received, acks, nacks int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.received, c.acks, c.nacks
}

// Wait waits until the client holds name in a state ok accepts.
func (c *Client) Wait(ctx context.Context, name string, ok func(Applied) bool) (Applied, error) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if a, have := c.Get(name); have && (ok == nil || ok(a)) {
			return a, nil
		}
		if err := c.StreamErr(name); err != nil {
			return Applied{}, fmt.Errorf("stream ended: %w", err)
		}
		select {
		case <-ctx.Done():
			a, _ := c.Get(name)
			return a, fmt.Errorf("waiting for %s (holding version %q): %w", name, a.Version, ctx.Err())
		case <-t.C:
		}
	}
}

// Close ends every stream.
func (c *Client) Close() {
	c.mu.Lock()
	for _, cancel := range c.streams {
		cancel()
	}
	c.closed = true
	c.mu.Unlock()
	c.wg.Wait()
}

func (c *Client) versionsLocked() map[string]string {
	out := map[string]string{}
	for n, a := range c.secrets {
		out[n] = a.Version
	}
	return out
}

// check applies Envoy's checks to one resource: the right type, a name it
// asked for, usable content.
func (c *Client) check(a *anypb.Any, wanted []string) (*tlsv3.Secret, error) {
	if a.GetTypeUrl() != SecretType {
		return nil, fmt.Errorf("unexpected type %s", a.GetTypeUrl())
	}
	s := &tlsv3.Secret{}
	if err := a.UnmarshalTo(s); err != nil {
		return nil, fmt.Errorf("unmarshal secret: %w", err)
	}
	if !slices.Contains(wanted, s.GetName()) {
		return nil, fmt.Errorf("Unexpected SDS secret (expecting %v): %s", wanted, s.GetName())
	}
	if err := usable(s); err != nil {
		return nil, err
	}
	if c.opts.Reject != nil {
		if err := c.opts.Reject(s.GetName(), s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// usable is what Envoy checks when it builds a TLS context from a secret.
func usable(s *tlsv3.Secret) error {
	switch t := s.GetType().(type) {
	case *tlsv3.Secret_TlsCertificate:
		if _, err := tls.X509KeyPair(t.TlsCertificate.GetCertificateChain().GetInlineBytes(), t.TlsCertificate.GetPrivateKey().GetInlineBytes()); err != nil {
			return fmt.Errorf("Failed to load certificate chain and private key: %w", err)
		}
	case *tlsv3.Secret_ValidationContext:
		vc := t.ValidationContext
		ca := vc.GetTrustedCa().GetInlineBytes()
		if cfg := vc.GetCustomValidatorConfig(); cfg != nil {
			spiffe := &tlsv3.SPIFFECertValidatorConfig{}
			if err := cfg.GetTypedConfig().UnmarshalTo(spiffe); err != nil {
				return fmt.Errorf("Failed to parse SPIFFE validator config: %w", err)
			}
			if len(spiffe.GetTrustDomains()) == 0 {
				return errors.New("SPIFFE validator config has no trust domains")
			}
			ca = spiffe.GetTrustDomains()[0].GetTrustBundle().GetInlineBytes()
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			return errors.New("Failed to load trusted CA certificates")
		}
	case *tlsv3.Secret_GenericSecret:
		if t.GenericSecret.GetSecret() == nil {
			return errors.New("generic secret without data")
		}
	case *tlsv3.Secret_SessionTicketKeys:
		for _, k := range t.SessionTicketKeys.GetKeys() {
			if len(k.GetInlineBytes()) != 80 {
				return fmt.Errorf("Incorrect TLS session ticket key length. Length %d, expected length 80", len(k.GetInlineBytes()))
			}
		}
	default:
		return errors.New("secret of no type")
	}
	return nil
}

// Leaf returns the leaf certificate of a tls_certificate secret.
func Leaf(s *tlsv3.Secret) (*x509.Certificate, error) {
	b, _ := pem.Decode(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	if b == nil {
		return nil, errors.New("no certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

func nack(msg string) *rpcstatus.Status { return &rpcstatus.Status{Code: 13, Message: msg} }

// runSotW runs one SotW stream: SDS for fixed names, or ADS following
// Subscribe/Unsubscribe.
func (c *Client) runSotW(ctx context.Context, fixed []string, updates <-chan []string) error {
	ads := updates != nil
	var (
		ss interface {
			Send(*discoveryv3.DiscoveryRequest) error
			Recv() (*discoveryv3.DiscoveryResponse, error)
		}
		err error
	)
	if ads {
		ss, err = discoveryv3.NewAggregatedDiscoveryServiceClient(c.conn).StreamAggregatedResources(ctx)
	} else {
		ss, err = secretv3.NewSecretDiscoveryServiceClient(c.conn).StreamSecrets(ctx)
	}
	if err != nil {
		return err
	}
	names := fixed
	// version_info last accepted: on a new stream Envoy sends it with its
	// first request (and no nonce).
	c.mu.Lock()
	accepted := c.adsAccepted
	if !ads {
		accepted = c.secrets[fixed[0]].Version
	}
	c.mu.Unlock()
	var sendMu sync.Mutex
	lastNonce := ""
	request := func(names []string, version, nonce string, detail *rpcstatus.Status, first bool) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		req := &discoveryv3.DiscoveryRequest{VersionInfo: version, ResourceNames: names, TypeUrl: SecretType, ResponseNonce: nonce, ErrorDetail: detail}
		if first {
			req.Node = c.node()
		}
		return ss.Send(req)
	}
	if ads {
		select {
		case names = <-updates:
		case <-ctx.Done():
			return nil
		}
	}
	if err := request(names, accepted, "", nil, true); err != nil {
		return err
	}
	if ads {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case n := <-updates:
					sendMu.Lock()
					names, nonce, v := n, lastNonce, accepted
					sendMu.Unlock()
					_ = request(names, v, nonce, nil, false)
				}
			}
		}()
	}
	for {
		resp, err := ss.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		sendMu.Lock()
		lastNonce = resp.GetNonce()
		cur := slices.Clone(names)
		if ads {
			// the names the stream asks for now
			c.mu.Lock()
			cur = slices.Clone(c.names)
			c.mu.Unlock()
		}
		sendMu.Unlock()
		ev := Event{Version: resp.GetVersionInfo(), Nonce: resp.GetNonce()}
		var reason string
		var got []*tlsv3.Secret
		if !ads && len(resp.GetResources()) != 1 {
			reason = fmt.Sprintf("Unexpected SDS secrets length: %d", len(resp.GetResources()))
		}
		for _, a := range resp.GetResources() {
			if reason != "" {
				break
			}
			s, err := c.check(a, cur)
			if err != nil {
				reason = err.Error()
				break
			}
			got = append(got, s)
			ev.Names = append(ev.Names, s.GetName())
		}
		c.mu.Lock()
		c.received++
		if reason == "" {
			c.acks++
			for _, s := range got {
				c.secrets[s.GetName()] = Applied{Name: s.GetName(), Version: resp.GetVersionInfo(), Secret: s, At: time.Now()}
			}
			if ads {
				c.adsAccepted = resp.GetVersionInfo()
			}
		} else {
			c.nacks++
		}
		c.mu.Unlock()
		if reason == "" {
			accepted = resp.GetVersionInfo()
			ev.Accepted = true
			err = request(cur, accepted, resp.GetNonce(), nil, false)
		} else {
			ev.Reason = reason
			err = request(cur, accepted, resp.GetNonce(), nack(reason), false)
		}
		c.emit(ev)
		if err != nil {
			return err
		}
	}
}

// runDelta runs one incremental stream (SDS or ADS).
func (c *Client) runDelta(ctx context.Context, initial map[string]string, updates <-chan []string) error {
	var (
		ds interface {
			Send(*discoveryv3.DeltaDiscoveryRequest) error
			Recv() (*discoveryv3.DeltaDiscoveryResponse, error)
		}
		err error
	)
	if c.opts.Mode == DeltaADS {
		ds, err = discoveryv3.NewAggregatedDiscoveryServiceClient(c.conn).DeltaAggregatedResources(ctx)
	} else {
		ds, err = secretv3.NewSecretDiscoveryServiceClient(c.conn).DeltaSecrets(ctx)
	}
	if err != nil {
		return err
	}
	var sendMu sync.Mutex
	send := func(req *discoveryv3.DeltaDiscoveryRequest) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		req.TypeUrl = SecretType
		return ds.Send(req)
	}
	var have []string
	select {
	case have = <-updates:
	case <-ctx.Done():
		return nil
	}
	if err := send(&discoveryv3.DeltaDiscoveryRequest{Node: c.node(), ResourceNamesSubscribe: have, InitialResourceVersions: initial}); err != nil {
		return err
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case want := <-updates:
				var sub, unsub []string
				for _, n := range want {
					if !slices.Contains(have, n) {
						sub = append(sub, n)
					}
				}
				for _, n := range have {
					if !slices.Contains(want, n) {
						unsub = append(unsub, n)
					}
				}
				have = want
				if len(sub)+len(unsub) > 0 {
					_ = send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub})
				}
			}
		}
	}()
	for {
		resp, err := ds.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		c.mu.Lock()
		cur := slices.Clone(c.names)
		c.mu.Unlock()
		ev := Event{Nonce: resp.GetNonce(), Removed: resp.GetRemovedResources()}
		var reason string
		type one struct {
			version string
			s       *tlsv3.Secret
		}
		var got []one
		for _, r := range resp.GetResources() {
			s, err := c.check(r.GetResource(), cur)
			if err == nil && s.GetName() != r.GetName() {
				err = fmt.Errorf("resource name %s does not match the secret's %s", r.GetName(), s.GetName())
			}
			if err != nil {
				reason = err.Error()
				break
			}
			got = append(got, one{r.GetVersion(), s})
			ev.Names = append(ev.Names, s.GetName())
		}
		c.mu.Lock()
		c.received++
		if reason == "" {
			c.acks++
			for _, o := range got {
				c.secrets[o.s.GetName()] = Applied{Name: o.s.GetName(), Version: o.version, Secret: o.s, At: time.Now()}
			}
			for _, n := range resp.GetRemovedResources() {
				delete(c.secrets, n)
			}
		} else {
			c.nacks++
		}
		c.mu.Unlock()
		req := &discoveryv3.DeltaDiscoveryRequest{ResponseNonce: resp.GetNonce()}
		if reason != "" {
			req.ErrorDetail = nack(reason)
			ev.Reason = reason
		} else {
			ev.Accepted = true
		}
		err = send(req)
		c.emit(ev)
		if err != nil {
			return err
		}
	}
}
