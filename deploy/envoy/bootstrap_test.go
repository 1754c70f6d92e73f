// Package envoy_test checks the Envoy bootstrap files in this directory
// against go-control-plane's v3 types: every *.yaml must parse with no unknown
// field, pass the protoc-gen-validate rules (also inside every typed_config),
// and wire SDS to secretplane and the SPIRE agent the way the README says.
package envoy_test

import (
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// Types only reached through a typed_config Any: protojson resolves them
	// from the global registry, so they must be linked in.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
)

const (
	secretplaneCluster = "secretplane"
	spireCluster       = "spire_agent"
	secretplaneID      = "spiffe://example.org/secretplane/server"
	httpOptionsKey     = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	tlsSocketName      = "envoy.transport_sockets.tls"
)

// How a file asks secretplane for its secrets.
const (
	viaGRPC  = "GRPC"       // api_config_source, StreamSecrets
	viaDelta = "DELTA_GRPC" // api_config_source, DeltaSecrets
	viaADS   = "ADS"        // ads: {} over dynamic_resources.ads_config
)

// fileWant is what one bootstrap file must contain beyond schema validity.
type fileWant struct {
	mode string // viaGRPC, viaDelta or viaADS, for every secretplane source
	// secretplaneSecrets is exactly the set of SDS names asked of secretplane.
	secretplaneSecrets []string
	listenPort         uint32
	// downstreamCert, if set, is the SDS certificate of a DownstreamTlsContext
	// on the listener.
	downstreamCert string
	// upstream, if set, is a cluster reached over mTLS with the SVID from the
	// SPIRE agent and a trust bundle from secretplane.
	upstream *upstreamWant
}

type upstreamWant struct {
	cluster, bundle, peerID string
}

// Every *.yaml here needs an entry, and every entry a file.
var wants = map[string]fileWant{
	"gateway-tls.yaml": {
		mode: viaGRPC, secretplaneSecrets: []string{"gateway/tls"},
		listenPort: 8443, downstreamCert: "gateway/tls",
	},
	"gateway-tls-delta.yaml": {
		mode: viaDelta, secretplaneSecrets: []string{"gateway/tls"},
		listenPort: 8443, downstreamCert: "gateway/tls",
	},
	"gateway-tls-ads.yaml": {
		mode: viaADS, secretplaneSecrets: []string{"gateway/tls"},
		listenPort: 8443, downstreamCert: "gateway/tls",
	},
	"upstream-mtls.yaml": {
		mode: viaGRPC, secretplaneSecrets: []string{"spiffe://example.org"},
		listenPort: 10000,
		upstream: &upstreamWant{
			cluster: "payments", bundle: "spiffe://example.org",
			peerID: "spiffe://example.org/payments/api",
		},
	},
}

// load parses a YAML bootstrap strictly and validates it, typed_config
// contents included (Bootstrap.ValidateAll does not look inside an Any).
func load(data []byte) (*bootstrapv3.Bootstrap, []error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, []error{err}
	}
	b := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, b); err != nil {
		return nil, []error{err}
	}
	var errs []error
	if err := b.ValidateAll(); err != nil {
		errs = append(errs, err)
	}
	walk(b.ProtoReflect(), func(m proto.Message) {
		a, ok := m.(*anypb.Any)
		if !ok {
			return
		}
		inner, err := a.UnmarshalNew()
		if err != nil {
			errs = append(errs, err)
			return
		}
		if v, ok := inner.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, err)
			}
		}
	})
	return b, errs
}

// walk calls visit on m and on every message under it, unpacking Any.
func walk(m protoreflect.Message, visit func(proto.Message)) {
	visit(m.Interface())
	if a, ok := m.Interface().(*anypb.Any); ok {
		if inner, err := a.UnmarshalNew(); err == nil {
			walk(inner.ProtoReflect(), visit)
		}
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			if fd.Message() != nil {
				for i, l := 0, v.List(); i < l.Len(); i++ {
					walk(l.Get(i).Message(), visit)
				}
			}
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message(), visit)
					return true
				})
			}
		case fd.Message() != nil:
			walk(v.Message(), visit)
		}
		return true
	})
}

func collect[T proto.Message](m proto.Message) []T {
	var out []T
	walk(m.ProtoReflect(), func(m proto.Message) {
		if t, ok := m.(T); ok {
			out = append(out, t)
		}
	})
	return out
}

func unpack[T proto.Message](t *testing.T, a *anypb.Any) T {
	t.Helper()
	var zero T
	if a == nil {
		t.Fatalf("missing typed_config, want %T", zero)
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		t.Fatalf("unpack %s: %v", a.GetTypeUrl(), err)
	}
	out, ok := m.(T)
	if !ok {
		t.Fatalf("typed_config is %T, want %T", m, zero)
	}
	return out
}

// sdsSource says which cluster an SDS config source reaches, and how.
func sdsSource(t *testing.T, b *bootstrapv3.Bootstrap, cs *corev3.ConfigSource) (cluster, mode string) {
	t.Helper()
	if cs.GetResourceApiVersion() != corev3.ApiVersion_V3 {
		t.Errorf("sds_config resource_api_version = %v, want V3", cs.GetResourceApiVersion())
	}
	var api *corev3.ApiConfigSource
	switch {
	case cs.GetAds() != nil:
		api, mode = b.GetDynamicResources().GetAdsConfig(), viaADS
		if api == nil {
			t.Fatalf("sds_config uses ads but dynamic_resources.ads_config is missing")
		}
		if api.GetApiType() != corev3.ApiConfigSource_GRPC {
			t.Errorf("ads_config api_type = %v, want GRPC", api.GetApiType())
		}
	case cs.GetApiConfigSource() != nil:
		api = cs.GetApiConfigSource()
		mode = api.GetApiType().String()
	default:
		t.Fatalf("sds_config is neither ads nor api_config_source: %v", cs)
	}
	if api.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		t.Errorf("transport_api_version = %v, want V3", api.GetTransportApiVersion())
	}
	if n := len(api.GetGrpcServices()); n != 1 {
		t.Fatalf("%d grpc_services, want 1", n)
	}
	cluster = api.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName()
	if cluster == "" {
		t.Fatalf("grpc_services[0] is not envoy_grpc with a cluster_name")
	}
	return cluster, mode
}

func clustersByName(b *bootstrapv3.Bootstrap) map[string]*clusterv3.Cluster {
	out := map[string]*clusterv3.Cluster{}
	for _, c := range b.GetStaticResources().GetClusters() {
		out[c.GetName()] = c
	}
	return out
}

func upstreamTLS(t *testing.T, c *clusterv3.Cluster) *tlsv3.UpstreamTlsContext {
	t.Helper()
	ts := c.GetTransportSocket()
	if ts.GetName() != tlsSocketName {
		t.Fatalf("cluster %s: transport_socket %q, want %s", c.GetName(), ts.GetName(), tlsSocketName)
	}
	return unpack[*tlsv3.UpstreamTlsContext](t, ts.GetTypedConfig())
}

func uriSANs(ctx *tlsv3.CertificateValidationContext) []string {
	var out []string
	for _, m := range ctx.GetMatchTypedSubjectAltNames() {
		if m.GetSanType() == tlsv3.SubjectAltNameMatcher_URI {
			out = append(out, m.GetMatcher().GetExact())
		}
	}
	return out
}

// checkMTLS checks an mTLS client context: the SVID from spire_agent as
// `default`, the bundle from bundleCluster as bundle, and a URI SAN match.
func checkMTLS(t *testing.T, b *bootstrapv3.Bootstrap, ctx *tlsv3.CommonTlsContext, bundleCluster, bundle, peerID string) {
	t.Helper()
	certs := ctx.GetTlsCertificateSdsSecretConfigs()
	if len(certs) != 1 || certs[0].GetName() != "default" {
		t.Fatalf("tls_certificate_sds_secret_configs = %v, want one named default", certs)
	}
	if c, _ := sdsSource(t, b, certs[0].GetSdsConfig()); c != spireCluster {
		t.Errorf("client SVID from cluster %q, want %s", c, spireCluster)
	}
	cvc := ctx.GetCombinedValidationContext()
	if cvc == nil {
		t.Fatalf("no combined_validation_context")
	}
	vc := cvc.GetValidationContextSdsSecretConfig()
	if vc.GetName() != bundle {
		t.Errorf("validation_context_sds_secret_config name = %q, want %q", vc.GetName(), bundle)
	}
	if c, _ := sdsSource(t, b, vc.GetSdsConfig()); c != bundleCluster {
		t.Errorf("bundle %q from cluster %q, want %s", bundle, c, bundleCluster)
	}
	if got := uriSANs(cvc.GetDefaultValidationContext()); !slices.Equal(got, []string{peerID}) {
		t.Errorf("URI SAN matchers = %v, want [%s]", got, peerID)
	}
}

func checkHTTP2(t *testing.T, c *clusterv3.Cluster) {
	t.Helper()
	opts := unpack[*httpv3.HttpProtocolOptions](t, c.GetTypedExtensionProtocolOptions()[httpOptionsKey])
	if opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Errorf("cluster %s: no explicit_http_config.http2_protocol_options", c.GetName())
	}
}

// checkSecretplaneCluster checks (c): secretplane over mTLS, SVID and bundle
// from the SPIRE agent, gRPC over HTTP/2 with TLS 1.3.
func checkSecretplaneCluster(t *testing.T, b *bootstrapv3.Bootstrap) {
	t.Helper()
	c := clustersByName(b)[secretplaneCluster]
	if c == nil {
		t.Fatalf("no cluster %s", secretplaneCluster)
	}
	checkHTTP2(t, c)
	var ports []uint32
	for _, e := range c.GetLoadAssignment().GetEndpoints() {
		for _, lb := range e.GetLbEndpoints() {
			ports = append(ports, lb.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue())
		}
	}
	if !slices.Equal(ports, []uint32{7443}) {
		t.Errorf("secretplane endpoint ports = %v, want [7443]", ports)
	}
	up := upstreamTLS(t, c)
	if up.GetSni() == "" {
		t.Errorf("secretplane: no sni")
	}
	ctx := up.GetCommonTlsContext()
	if !slices.Contains(ctx.GetAlpnProtocols(), "h2") {
		t.Errorf("secretplane: alpn_protocols %v lacks h2", ctx.GetAlpnProtocols())
	}
	if v := ctx.GetTlsParams().GetTlsMinimumProtocolVersion(); v != tlsv3.TlsParameters_TLSv1_3 {
		t.Errorf("secretplane: tls_minimum_protocol_version = %v, want TLSv1_3", v)
	}
	checkMTLS(t, b, ctx, spireCluster, "ROOTCA", secretplaneID)

	s := clustersByName(b)[spireCluster]
	if s == nil {
		t.Fatalf("no cluster %s", spireCluster)
	}
	checkHTTP2(t, s)
	eps := s.GetLoadAssignment().GetEndpoints()
	if len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 ||
		!strings.HasSuffix(eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath(), ".sock") {
		t.Errorf("spire_agent: want one pipe endpoint on a .sock path, got %v", eps)
	}
}

func TestBootstraps(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no *.yaml bootstrap in this directory")
	}
	for _, f := range files {
		if _, ok := wants[f]; !ok {
			t.Errorf("%s: no entry in wants; add what it must contain", f)
		}
	}
	for name := range wants {
		if !slices.Contains(files, name) {
			t.Errorf("wants lists %s, which does not exist", name)
		}
	}

	for _, f := range files {
		want, ok := wants[f]
		if !ok {
			continue
		}
		t.Run(f, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			b, errs := load(data)
			for _, err := range errs {
				t.Errorf("%s: %v", f, err)
			}
			if b == nil || len(errs) > 0 {
				t.FailNow()
			}

			if b.GetNode().GetId() == "" || b.GetNode().GetCluster() == "" {
				t.Errorf("node id/cluster not set: %v", b.GetNode())
			}
			adm := b.GetAdmin().GetAddress().GetSocketAddress()
			if adm.GetAddress() != "127.0.0.1" || adm.GetPortValue() != 9901 {
				t.Errorf("admin on %s:%d, want 127.0.0.1:9901", adm.GetAddress(), adm.GetPortValue())
			}

			checkSecretplaneCluster(t, b)

			// Every SDS source in the file, wherever it is.
			var fromSecretplane []string
			for _, s := range collect[*tlsv3.SdsSecretConfig](b) {
				cluster, mode := sdsSource(t, b, s.GetSdsConfig())
				switch cluster {
				case secretplaneCluster:
					fromSecretplane = append(fromSecretplane, s.GetName())
					if mode != want.mode {
						t.Errorf("secret %q requested via %s, want %s", s.GetName(), mode, want.mode)
					}
				case spireCluster:
					if s.GetName() != "default" && s.GetName() != "ROOTCA" {
						t.Errorf("secret %q asked of %s, which serves default and ROOTCA here", s.GetName(), spireCluster)
					}
					if mode != viaGRPC {
						t.Errorf("secret %q from %s via %s, want GRPC", s.GetName(), spireCluster, mode)
					}
				default:
					t.Errorf("secret %q from unexpected cluster %q", s.GetName(), cluster)
				}
			}
			sort.Strings(fromSecretplane)
			fromSecretplane = slices.Compact(fromSecretplane)
			if !slices.Equal(fromSecretplane, want.secretplaneSecrets) {
				t.Errorf("secrets from secretplane = %v, want %v", fromSecretplane, want.secretplaneSecrets)
			}

			dyn := b.GetDynamicResources()
			if want.mode == viaADS {
				// secretplane's ADS serves secrets only.
				if dyn.GetLdsConfig() != nil || dyn.GetCdsConfig() != nil {
					t.Errorf("ADS file must not take listeners or clusters from secretplane")
				}
			} else if dyn.GetAdsConfig() != nil {
				t.Errorf("ads_config set in a non-ADS file")
			}

			// Every cluster named anywhere exists statically.
			clusters := clustersByName(b)
			for _, g := range collect[*corev3.GrpcService_EnvoyGrpc](b) {
				if clusters[g.GetClusterName()] == nil {
					t.Errorf("envoy_grpc cluster %q is not defined", g.GetClusterName())
				}
			}
			for _, r := range collect[*routev3.RouteAction](b) {
				if clusters[r.GetCluster()] == nil {
					t.Errorf("route to undefined cluster %q", r.GetCluster())
				}
			}

			listeners := b.GetStaticResources().GetListeners()
			if len(listeners) != 1 {
				t.Fatalf("%d listeners, want 1", len(listeners))
			}
			l := listeners[0]
			if p := l.GetAddress().GetSocketAddress().GetPortValue(); p != want.listenPort {
				t.Errorf("listener port %d, want %d", p, want.listenPort)
			}
			checkListener(t, b, l, want)

			if u := want.upstream; u != nil {
				c := clusters[u.cluster]
				if c == nil {
					t.Fatalf("no cluster %s", u.cluster)
				}
				checkMTLS(t, b, upstreamTLS(t, c).GetCommonTlsContext(), secretplaneCluster, u.bundle, u.peerID)
			}
		})
	}
}

func checkListener(t *testing.T, b *bootstrapv3.Bootstrap, l *listenerv3.Listener, want fileWant) {
	t.Helper()
	if len(l.GetFilterChains()) != 1 {
		t.Fatalf("%d filter chains, want 1", len(l.GetFilterChains()))
	}
	fc := l.GetFilterChains()[0]
	hcm := 0
	for _, f := range fc.GetFilters() {
		if f.GetName() == "envoy.filters.network.http_connection_manager" {
			h := unpack[*hcmv3.HttpConnectionManager](t, f.GetTypedConfig())
			if len(h.GetHttpFilters()) == 0 || h.GetHttpFilters()[len(h.GetHttpFilters())-1].GetName() != "envoy.filters.http.router" {
				t.Errorf("last HTTP filter is not the router")
			}
			hcm++
		}
	}
	if hcm != 1 {
		t.Errorf("%d HTTP connection managers, want 1", hcm)
	}
	ts := fc.GetTransportSocket()
	if want.downstreamCert == "" {
		if ts != nil {
			t.Errorf("listener has a transport socket %q, want plain text", ts.GetName())
		}
		return
	}
	if ts.GetName() != tlsSocketName {
		t.Fatalf("listener transport_socket %q, want %s", ts.GetName(), tlsSocketName)
	}
	down := unpack[*tlsv3.DownstreamTlsContext](t, ts.GetTypedConfig())
	certs := down.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()
	if len(certs) != 1 || certs[0].GetName() != want.downstreamCert {
		t.Fatalf("listener certificates %v, want one named %s", certs, want.downstreamCert)
	}
	if c, _ := sdsSource(t, b, certs[0].GetSdsConfig()); c != secretplaneCluster {
		t.Errorf("listener certificate from cluster %q, want %s", c, secretplaneCluster)
	}
}

// TestLoadRejects makes sure load is strict: a harness that accepted these
// would let a broken file through.
func TestLoadRejects(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown field", "node: {id: gw, cluster: edge, colour: red}\n", "colour"},
		{"bad enum", `static_resources:
  clusters:
  - name: c
    connect_timeout: 1s
    type: NOT_A_TYPE
`, "NOT_A_TYPE"},
		{"rule broken at top level", `static_resources:
  clusters:
  - name: c
    connect_timeout: 0s
`, "ConnectTimeout"},
		{"rule broken inside typed_config", `static_resources:
  clusters:
  - name: c
    connect_timeout: 1s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: ` + strings.Repeat("a", 256) + `
`, "Sni"},
		{"unregistered typed_config", `static_resources:
  clusters:
  - name: c
    connect_timeout: 1s
    transport_socket:
      name: x
      typed_config:
        "@type": type.googleapis.com/no.such.Type
`, "no.such.Type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errs := load([]byte(tc.yaml))
			if len(errs) == 0 {
				t.Fatalf("accepted:\n%s", tc.yaml)
			}
			var all []string
			for _, e := range errs {
				all = append(all, e.Error())
			}
			if msg := strings.Join(all, "; "); !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not mention %q", msg, tc.want)
			}
		})
	}
}
