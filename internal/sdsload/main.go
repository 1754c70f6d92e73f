// Command sdsload holds many Envoy SDS streams against a secretplane server
// from a process of its own, one internal/envoysim client per stream (one
// secret name each), spread over a few hundred mTLS connections, and
// measures how long a content change takes to reach every stream.
//
// It is driven over its standard streams (e2e's BenchmarkSDSStreams10k
// drives it). Once every stream holds the secret it prints one JSON line
//
//	{"event":"ready","streams":10000,"conns":250,"open_ms":...,"serials":{"<leaf serial>":10000}}
//
// and then reads commands, one a line:
//
//	expect <leaf serial, hex> <unix nanoseconds the change started>
//
// waits until every stream has received and ACKed a tls_certificate whose
// leaf has that serial, and prints
//
//	{"event":"change","serial":"...","streams":10000,"reached":10000,"lat_us":[...],...}
//
// with each stream's latency (the moment its ACK was sent, less the start)
// in microseconds. End of input ends it.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/envoysim"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sdsload:", err)
		os.Exit(1)
	}
}

// state is what every stream holds, for waiting on a serial.
type state struct {
	mu     sync.Mutex
	serial []string    // leaf serial each stream holds ("" none yet)
	at     []time.Time // when it ACKed it
	counts map[string]int
	errs   int
	first  error
	opened []chan struct{} // closed when the stream first holds a value or fails
	done   []bool
}

func (s *state) record(i int, serial string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serial[i] == serial {
		return
	}
	if old := s.serial[i]; old != "" {
		s.counts[old]--
	}
	s.serial[i], s.at[i] = serial, at
	s.counts[serial]++
	s.openedLocked(i)
}

func (s *state) fail(i int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs++
	if s.first == nil {
		s.first = fmt.Errorf("stream %d: %w", i, err)
	}
	s.openedLocked(i)
}

func (s *state) openedLocked(i int) {
	if !s.done[i] {
		s.done[i] = true
		close(s.opened[i])
	}
}

// holding is how many streams hold serial ("": any value), and the errors.
func (s *state) holding(serial string) (n, errs int, first error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if serial == "" {
		for _, c := range s.counts {
			n += c
		}
	} else {
		n = s.counts[serial]
	}
	return n, s.errs, s.first
}

func run() error {
	var (
		addr       = flag.String("addr", "", "server address (host:port)")
		serverID   = flag.String("server-id", "", "SPIFFE ID of the server")
		certFile   = flag.String("cert", "", "client SVID certificate (PEM)")
		keyFile    = flag.String("key", "", "client SVID key (PEM)")
		bundleFile = flag.String("bundle", "", "trust bundle (PEM)")
		streams    = flag.Int("streams", 10000, "SDS streams to hold, one name each")
		nconns     = flag.Int("conns", 250, "connections to spread the streams over")
		name       = flag.String("name", "", "the secret every stream asks for")
		modeName   = flag.String("mode", "sotw", "sotw, delta, ads or delta-ads")
		parallel   = flag.Int("open-parallel", 200, "streams opening at once")
		timeout    = flag.Duration("timeout", 2*time.Minute, "how long to wait for the streams to open, and for each change")
	)
	flag.Parse()
	if *addr == "" || *serverID == "" || *certFile == "" || *keyFile == "" || *bundleFile == "" || *name == "" {
		return fmt.Errorf("-addr, -server-id, -cert, -key, -bundle and -name are required")
	}
	if *streams <= 0 || *nconns <= 0 || *parallel <= 0 {
		return fmt.Errorf("-streams, -conns and -open-parallel must be positive")
	}
	mode := -1
	for _, m := range envoysim.Modes {
		if m.String() == *modeName {
			mode = int(m)
		}
	}
	if mode < 0 {
		return fmt.Errorf("-mode %q: want sotw, delta, ads or delta-ads", *modeName)
	}
	sid, err := spiffeid.FromString(*serverID)
	if err != nil {
		return fmt.Errorf("-server-id: %w", err)
	}
	src, err := identity.LoadFiles(*certFile, *keyFile, *bundleFile)
	if err != nil {
		return err
	}
	creds := credentials.NewTLS(identity.ClientTLSConfig(src, sid))
	conns := make([]*grpc.ClientConn, *nconns)
	for i := range conns {
		if conns[i], err = grpc.NewClient(*addr, grpc.WithTransportCredentials(creds)); err != nil {
			return err
		}
		conns[i].Connect()
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &state{serial: make([]string, *streams), at: make([]time.Time, *streams), counts: map[string]int{},
		opened: make([]chan struct{}, *streams), done: make([]bool, *streams)}
	for i := range st.opened {
		st.opened[i] = make(chan struct{})
	}
	var serials sync.Map // response version -> leaf serial: parsed once per version
	serialOf := func(a envoysim.Applied) string {
		key := a.Version + "\x00" + a.Name
		if v, ok := serials.Load(key); ok {
			return v.(string)
		}
		leaf, err := envoysim.Leaf(a.Secret)
		if err != nil {
			return "unparsable"
		}
		s := leaf.SerialNumber.Text(16)
		serials.Store(key, s)
		return s
	}
	clients := make([]*envoysim.Client, *streams)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	start := time.Now()
	sem := make(chan struct{}, *parallel)
	progress := time.NewTicker(5 * time.Second)
	defer progress.Stop()
	deadline := time.After(*timeout)
	for i := range clients {
		select {
		case sem <- struct{}{}:
		case <-deadline:
			n, errs, first := st.holding("")
			return fmt.Errorf("opening: only %d of %d streams started in %v (%d holding a value, %d failed; first failure: %v)", i, *streams, *timeout, n, errs, first)
		}
		c := envoysim.New(conns[i%len(conns)], envoysim.Options{Mode: envoysim.Mode(mode), NodeID: fmt.Sprintf("load-%05d", i), Cluster: "sdsload"})
		clients[i] = c
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case ev := <-c.Events():
					switch {
					case ev.Err != nil:
						st.fail(i, ev.Err)
					case ev.Accepted:
						if a, ok := c.Get(*name); ok {
							st.record(i, serialOf(a), ev.At)
						}
					}
				}
			}
		})
		go func() {
			<-st.opened[i]
			<-sem
		}()
		c.Subscribe(ctx, *name)
		select {
		case <-progress.C:
			n, errs, _ := st.holding("")
			fmt.Fprintf(os.Stderr, "sdsload: %v: %d streams started, %d holding the secret, %d failed\n", time.Since(start).Round(time.Millisecond), i+1, n, errs)
		default:
		}
	}
	for {
		n, errs, first := st.holding("")
		if errs > 0 {
			return fmt.Errorf("%d of %d streams failed while opening (first: %v)", errs, *streams, first)
		}
		if n == *streams {
			break
		}
		select {
		case <-deadline:
			return fmt.Errorf("opening: %d of %d streams hold the secret after %v", n, *streams, *timeout)
		case <-progress.C:
			fmt.Fprintf(os.Stderr, "sdsload: %v: all started, %d holding the secret\n", time.Since(start).Round(time.Millisecond), n)
		case <-time.After(10 * time.Millisecond):
		}
	}
	opened := time.Since(start)
	st.mu.Lock()
	held := map[string]int{}
	for k, v := range st.counts {
		if v > 0 {
			held[k] = v
		}
	}
	st.mu.Unlock()
	out := json.NewEncoder(os.Stdout)
	if err := out.Encode(map[string]any{"event": "ready", "streams": *streams, "conns": *nconns, "mode": *modeName,
		"open_ms": float64(opened.Microseconds()) / 1000, "serials": held}); err != nil {
		return err
	}

	counts := func() (received, acks, nacks int) {
		for _, c := range clients {
			r, a, n := c.Counts()
			received, acks, nacks = received+r, acks+a, nacks+n
		}
		return
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) != 3 || f[0] != "expect" {
			return fmt.Errorf("command %q: want \"expect SERIAL UNIXNANO\"", in.Text())
		}
		serial := strings.ToLower(f[1])
		t0, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return fmt.Errorf("command %q: %w", in.Text(), err)
		}
		begin := time.Unix(0, t0)
		limit := time.Now().Add(*timeout)
		var n, errs int
		var first error
		for {
			n, errs, first = st.holding(serial)
			if n == *streams || errs > 0 || time.Now().After(limit) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		lat := make([]int64, 0, n)
		st.mu.Lock()
		for i, s := range st.serial {
			if s == serial {
				lat = append(lat, st.at[i].Sub(begin).Microseconds())
			}
		}
		st.mu.Unlock()
		received, acks, nacks := counts()
		msg := map[string]any{"event": "change", "serial": serial, "streams": *streams, "reached": n, "lat_us": lat,
			"errors": errs, "received": received, "acks": acks, "nacks": nacks}
		if first != nil {
			msg["first_error"] = first.Error()
		}
		if err := out.Encode(msg); err != nil {
			return err
		}
	}
	return in.Err()
}
