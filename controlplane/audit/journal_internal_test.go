package audit

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/secretplane/secretplane/store"
)

// The chain hash is stored: it must never change for the same event.
func TestHashIsStable(t *testing.T) {
	e := store.AuditEvent{Seq: 42, Time: time.Date(2026, 11, 25, 4, 5, 6, 123456000, time.UTC),
		Actor: "spiffe://x.test/payments/api", Action: "SecretsService.Resolve", Target: "payments/db",
		Decision: "allow", Policy: "api-read", Outcome: "ok", RequestID: "req-1", PrevHash: "abc"}
	if got, want := Hash(e), "d0e2dc6ec3e7810a1608978490bb12a0543634d18413cbf6ceebfa85a4d32df6"; got != want {
		t.Fatalf("hash %s, want %s", got, want)
	}
	// With what it acted on: a hash of its own, stable too, and every
	// field counts (moving text between them changes the hash).
	e.Ref, e.Refused = "local://payments/db#password", ""
	withRef := Hash(e)
	if want := "faa63f46f176cef7240faa5f7b47f411b11d5ed0c8adf83500d1d2392e09b342"; withRef != want {
		t.Fatalf("hash with a ref %s, want %s", withRef, want)
	}
	e.Ref, e.Refused = "", "local://payments/db#password"
	if Hash(e) == withRef {
		t.Fatal("Ref and Refused hash alike")
	}
	e.Refused, e.RequestID = "", "req-1local://payments/db#password"
	if Hash(e) == withRef {
		t.Fatal("an event hashes like another with its text in another field")
	}
}

// What the writer stores is what it hashed: text makes every field valid
// UTF-8 without NUL and leaves good text alone.
func TestText(t *testing.T) {
	cases := []struct{ in, want string }{
		{"payments/db", "payments/db"},
		{"spiffe://x.test/ünïcode", "spiffe://x.test/ünïcode"},
		{"a\xffb", "a\uFFFDb"},
		{"a\x00b", "a\uFFFDb"},
		{"\xc3", "\uFFFD"},
		{"", ""},
	}
	for _, tc := range cases {
		if got := text(tc.in); got != tc.want {
			t.Errorf("text(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func roundTrip(t *testing.T, e store.AuditEvent) {
	t.Helper()
	line := appendEvent(nil, e)
	var got, want JSONEvent
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	std, err := json.Marshal(jsonEvent(e))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(std, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(storeEvent(got), e) {
		t.Fatalf("appendEvent decodes to %+v, encoding/json's to %+v, event %+v", got, want, e)
	}
}

func event(fields ...string) store.AuditEvent {
	for len(fields) < 4 {
		fields = append(fields, "")
	}
	e := store.AuditEvent{Seq: 7, Time: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC),
		Actor: text(fields[0]), Action: "SecretsService.Resolve", Target: text(fields[1]), Decision: "deny",
		Policy: text(fields[2]), Outcome: "denied", RequestID: text(fields[3]), PrevHash: "p"}
	e.Hash = Hash(e)
	return e
}

func TestAppendEventMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", `quote " and \ backslash`, "tab\tnewline\nbell\x07", "<script>&amp;", "ünïcode ✓ \u2028", "\x7f\x1f"} {
		roundTrip(t, event(s, s, s, s))
	}
	roundTrip(t, event("a", "b")) // empty grant and request id are omitted
	withRef := event("a", "b")
	withRef.Ref, withRef.Refused = "vault://secret/a/b#c,local://x#k", "payments/x"
	withRef.Hash = Hash(withRef)
	roundTrip(t, withRef)
	e := event("a", "b")
	e.Time = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) // whole seconds
	roundTrip(t, e)
}

func FuzzAppendEvent(f *testing.F) {
	f.Add("spiffe://x.test/a", "payments/db", "grant", "req")
	f.Add("\x00\xff", `"\`, "<>&", "\u2028")
	f.Fuzz(func(t *testing.T, actor, target, grant, request string) {
		roundTrip(t, event(actor, target, grant, request))
	})
}

// The journal is read back at every start: no input may panic it, and
// whatever it accepts is a verified chain.
func FuzzDecodeSegment(f *testing.F) {
	var seg []byte
	prev := ""
	for i := int64(1); i <= 3; i++ {
		e := event("spiffe://x.test/a", "payments/db")
		e.Seq, e.PrevHash = i, prev
		e.Hash = Hash(e)
		prev = e.Hash
		seg = append(appendEvent(seg, e), '\n')
	}
	f.Add(seg)
	f.Add(seg[:len(seg)-7])
	f.Add([]byte("garbage\n"))
	f.Add([]byte(strings.Replace(string(seg), "payments", "billing", 1)))
	f.Fuzz(func(t *testing.T, raw []byte) {
		events, _, err := decodeSegment(raw, nil)
		if err != nil {
			return
		}
		for i, e := range events {
			if Hash(e) != e.Hash || (i > 0 && (e.Seq != events[i-1].Seq+1 || e.PrevHash != events[i-1].Hash)) {
				t.Fatalf("accepted a broken chain at %d: %+v", i, e)
			}
		}
	})
}
