// Command rotload holds the consumers of one secret against a secretplane
// server from a process of its own, for timing a rotation: Watch streams
// through the client library (client.Client.Watch, which acknowledges
// every version after its hook), spread over a number of SPIFFE
// identities, and Envoy SDS streams (one internal/envoysim client each,
// told apart by node id, over a few connections of one identity). The
// identities are issued in-process from the dev CA of the server's data
// directory (-ca-dir).
//
// The registry counts a Watch consumer per identity (Watch streams carry
// no node id), and an SDS consumer per node id: -identities bounds the
// distinct Watch consumers.
//
// It is driven over its standard streams (e2e's BenchmarkRotation1kWatch1kSDS
// drives it). Once every consumer holds the secret it prints one JSON line
//
//	{"event":"ready","watch":1000,"identities":1000,"sds":1000,"open_ms":...,"watch_values":{"<sha256/16>":1000},"sds_values":{...}}
//
// (values are never printed: only the first 16 hex digits of their
// SHA-256) and then reads commands, one a line:
//
//	await <unix nanoseconds the change started> <old value's sha256/16>
//
// waits until every consumer holds a value other than the old one, and
// prints
//
//	{"event":"changed","reached":2000,"watch_lat_us":[...],"sds_lat_us":[...],"watch_values":{...},"watch_versions":{...},"sds_values":{...},...}
//
// with each consumer's latency (the moment its hook ran or its SDS ACK was
// sent, less the start) in microseconds. End of input ends it.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/secretplane/secretplane/client"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/envoysim"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "rotload:", err)
		os.Exit(1)
	}
}

// digest names a value without showing it.
func digest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

// holding is what one consumer holds and since when.
type holding struct {
	value   string // digest; "" nothing yet
	version string
	at      time.Time
}

// state is what every consumer holds: Watch consumers first, then SDS.
type state struct {
	mu    sync.Mutex
	held  []holding
	errs  int
	first error
}

func (s *state) record(i int, value, version string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[i].value == value && s.held[i].version == version {
		return
	}
	s.held[i] = holding{value: value, version: version, at: at}
}

func (s *state) fail(i int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs++
	if s.first == nil {
		s.first = fmt.Errorf("consumer %d: %w", i, err)
	}
}

// count is how many consumers hold a value and not old ("": any value).
func (s *state) count(old string) (n, errs int, first error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.held {
		if h.value != "" && h.value != old {
			n++
		}
	}
	return n, s.errs, s.first
}

func run() error {
	var (
		addr       = flag.String("addr", "", "server address (host:port)")
		serverID   = flag.String("server-id", "", "SPIFFE ID of the server")
		caDir      = flag.String("ca-dir", "", "the dev CA's directory (<data dir>/ca), to issue the consumers' SVIDs")
		name       = flag.String("name", "", "the secret every consumer watches")
		watches    = flag.Int("watch", 1000, "Watch streams (client library)")
		identities = flag.Int("identities", 1000, "SPIFFE identities the Watch streams are spread over (one connection each)")
		sdsStreams = flag.Int("sds", 1000, "Envoy SDS streams (SotW), one node id each")
		sdsConns   = flag.Int("sds-conns", 50, "connections the SDS streams are spread over")
		prefix     = flag.String("id-prefix", "rotload", "workload name prefix of the issued identities")
		parallel   = flag.Int("open-parallel", 100, "consumers opening at once")
		timeout    = flag.Duration("timeout", 2*time.Minute, "how long to wait for the consumers to open, and for each change")
	)
	flag.Parse()
	if *addr == "" || *serverID == "" || *caDir == "" || *name == "" {
		return fmt.Errorf("-addr, -server-id, -ca-dir and -name are required")
	}
	if *watches < 0 || *sdsStreams < 0 || *watches+*sdsStreams == 0 || *parallel <= 0 {
		return fmt.Errorf("-watch and -sds must not be negative nor both zero; -open-parallel must be positive")
	}
	*identities = max(1, min(*identities, *watches))
	*sdsConns = max(1, min(*sdsConns, *sdsStreams))
	sid, err := spiffeid.FromString(*serverID)
	if err != nil {
		return fmt.Errorf("-server-id: %w", err)
	}
	ca, err := identity.LoadCA(*caDir)
	if err != nil {
		return err
	}
	issue := func(workload string) (*identity.StaticSource, error) {
		id, err := identity.DevWorkloadID(ca.TrustDomain(), workload)
		if err != nil {
			return nil, err
		}
		svid, err := ca.IssueSVID(id, 2*time.Hour)
		if err != nil {
			return nil, err
		}
		return identity.NewStaticSource(svid, ca.Bundle()), nil
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	total := *watches + *sdsStreams
	st := &state{held: make([]holding, total)}
	start := time.Now()

	// Watch consumers: a client (one connection) per identity, the
	// streams dealt round-robin over them.
	clients := make([]*client.Client, *identities)
	for k := range clients {
		src, err := issue(fmt.Sprintf("%s-w%04d", *prefix, k))
		if err != nil {
			return err
		}
		if clients[k], err = client.New(ctx, client.Config{Address: *addr, ServerID: sid, Source: src}); err != nil {
			return err
		}
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	var hookCalls atomic.Int64
	watchers := make([]*client.Watcher, *watches)
	var openWG sync.WaitGroup // the Watch calls under way
	defer func() {
		openWG.Wait()
		for _, w := range watchers {
			if w != nil {
				w.Close()
			}
		}
	}()

	// SDS consumers: one identity, a few connections, a node id each.
	sdsClients := make([]*envoysim.Client, *sdsStreams)
	var conns []*grpc.ClientConn
	defer func() {
		for _, c := range sdsClients {
			if c != nil {
				c.Close()
			}
		}
		for _, c := range conns {
			c.Close()
		}
	}()
	if *sdsStreams > 0 {
		src, err := issue(*prefix + "-sds")
		if err != nil {
			return err
		}
		creds := credentials.NewTLS(identity.ClientTLSConfig(src, sid))
		conns = make([]*grpc.ClientConn, *sdsConns)
		for i := range conns {
			if conns[i], err = grpc.NewClient(*addr, grpc.WithTransportCredentials(creds)); err != nil {
				return err
			}
			conns[i].Connect()
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	// Open everything, -open-parallel at a time: a Watch returns once it
	// holds its first value; an SDS stream frees its slot on its first
	// accepted response (or its failure).
	sem := make(chan struct{}, *parallel)
	deadline := time.After(*timeout)
	progress := time.NewTicker(5 * time.Second)
	defer progress.Stop()
	acquire := func(i int) error {
		select {
		case sem <- struct{}{}:
			return nil
		case <-deadline:
			n, errs, first := st.count("")
			return fmt.Errorf("opening: only %d of %d consumers started in %v (%d holding a value, %d failed; first failure: %v)", i, total, *timeout, n, errs, first)
		}
	}
	for i := range watchers {
		if err := acquire(i); err != nil {
			return err
		}
		openWG.Go(func() {
			defer func() { <-sem }()
			c := clients[i%len(clients)]
			w, err := c.Watch(ctx, []string{*name}, func(_ context.Context, _, s client.Secret) error {
				hookCalls.Add(1)
				st.record(i, digest(s.Value), s.Version, time.Now())
				return nil
			})
			if err != nil {
				st.fail(i, err)
				return
			}
			watchers[i] = w
			if s, ok := w.Get(*name); ok {
				st.record(i, digest(s.Value), s.Version, time.Now())
			}
		})
	}
	for j := range sdsClients {
		i := *watches + j
		if err := acquire(i); err != nil {
			return err
		}
		c := envoysim.New(conns[j%len(conns)], envoysim.Options{Mode: envoysim.SotW, NodeID: fmt.Sprintf("%s-sds-%05d", *prefix, j), Cluster: "rotload"})
		sdsClients[j] = c
		var once sync.Once
		release := func() { once.Do(func() { <-sem }) }
		wg.Go(func() {
			defer release()
			for {
				select {
				case <-ctx.Done():
					return
				case ev := <-c.Events():
					switch {
					case ev.Err != nil:
						st.fail(i, ev.Err)
						release()
					case ev.Accepted:
						if a, ok := c.Get(*name); ok {
							st.record(i, digest(a.Secret.GetGenericSecret().GetSecret().GetInlineBytes()), a.Version, a.At)
						}
						release()
					}
				}
			}
		})
		c.Subscribe(ctx, *name)
		select {
		case <-progress.C:
			n, errs, _ := st.count("")
			fmt.Fprintf(os.Stderr, "rotload: %v: %d consumers started, %d holding the secret, %d failed\n", time.Since(start).Round(time.Millisecond), i+1, n, errs)
		default:
		}
	}
	openWG.Wait()
	for {
		n, errs, first := st.count("")
		if errs > 0 {
			return fmt.Errorf("%d of %d consumers failed while opening (first: %v)", errs, total, first)
		}
		if n == total {
			break
		}
		select {
		case <-deadline:
			return fmt.Errorf("opening: %d of %d consumers hold the secret after %v", n, total, *timeout)
		case <-progress.C:
			fmt.Fprintf(os.Stderr, "rotload: %v: all started, %d holding the secret\n", time.Since(start).Round(time.Millisecond), n)
		case <-time.After(10 * time.Millisecond):
		}
	}
	opened := time.Since(start)

	// tally is what the Watch and the SDS consumers hold.
	tally := func() (wv, wver, sv map[string]int) {
		wv, wver, sv = map[string]int{}, map[string]int{}, map[string]int{}
		st.mu.Lock()
		defer st.mu.Unlock()
		for i, h := range st.held {
			if i < *watches {
				wv[h.value]++
				wver[h.version]++
			} else {
				sv[h.value]++
			}
		}
		return
	}
	out := json.NewEncoder(os.Stdout)
	wv, wver, sv := tally()
	if err := out.Encode(map[string]any{"event": "ready", "watch": *watches, "identities": *identities, "sds": *sdsStreams, "sds_conns": *sdsConns,
		"open_ms": float64(opened.Microseconds()) / 1000, "watch_values": wv, "watch_versions": wver, "sds_values": sv}); err != nil {
		return err
	}

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) != 3 || f[0] != "await" {
			return fmt.Errorf("command %q: want \"await UNIXNANO OLDDIGEST\"", in.Text())
		}
		t0, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return fmt.Errorf("command %q: %w", in.Text(), err)
		}
		begin, old := time.Unix(0, t0), f[2]
		limit := time.Now().Add(*timeout)
		var n, errs int
		var first error
		for {
			n, errs, first = st.count(old)
			if n == total || errs > 0 || time.Now().After(limit) {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		wlat, slat := make([]int64, 0, *watches), make([]int64, 0, *sdsStreams)
		st.mu.Lock()
		for i, h := range st.held {
			if h.value == "" || h.value == old {
				continue
			}
			if i < *watches {
				wlat = append(wlat, h.at.Sub(begin).Microseconds())
			} else {
				slat = append(slat, h.at.Sub(begin).Microseconds())
			}
		}
		st.mu.Unlock()
		var received, acks, nacks int
		for _, c := range sdsClients {
			r, a, n := c.Counts()
			received, acks, nacks = received+r, acks+a, nacks+n
		}
		wv, wver, sv := tally()
		msg := map[string]any{"event": "changed", "consumers": total, "reached": n, "watch_lat_us": wlat, "sds_lat_us": slat,
			"watch_values": wv, "watch_versions": wver, "sds_values": sv, "hook_calls": hookCalls.Load(),
			"errors": errs, "sds_received": received, "sds_acks": acks, "sds_nacks": nacks}
		if first != nil {
			msg["first_error"] = first.Error()
		}
		if err := out.Encode(msg); err != nil {
			return err
		}
	}
	return in.Err()
}
