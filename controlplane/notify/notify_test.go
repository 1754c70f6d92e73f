package notify_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/notify"
	"github.com/secretplane/secretplane/store/sqlite"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A receiver that cannot be reached is recorded and logged by what went
// wrong, never by its URL, whose query may carry the receiver's token.
func TestTransportErrorsDoNotQuoteTheURL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens: every attempt fails at the transport
	const token = "tok3n-in-the-query"
	logs := &lockedBuffer{}
	bus := events.New()
	n := notify.New(st, bus, notify.Options{
		Webhooks: []notify.Webhook{{Name: "ops", URL: "https://" + addr + "/hook?token=" + token, Key: []byte("0123456789abcdef")}},
		Backoff:  10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Poll: 10 * time.Millisecond, MaxAttempts: 3,
		Log: slog.New(slog.NewTextHandler(logs, nil)),
	})
	go n.Run(ctx)
	time.Sleep(50 * time.Millisecond) // subscribed
	bus.Publish(events.RotationStep{ID: "rot-1", Secret: "payments/db", State: "completed", Step: "completed"})
	for {
		ds, err := st.ListDeliveries(ctx, "ops", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 1 && ds[0].State == "dead" {
			if ds[0].LastError == "" || strings.Contains(ds[0].LastError, token) {
				t.Fatalf("last error %q", ds[0].LastError)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("deliveries: %+v", ds)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if out := logs.String(); strings.Contains(out, token) || !strings.Contains(out, "dead-lettered") {
		t.Fatalf("logs:\n%s", out)
	}
}
