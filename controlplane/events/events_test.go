package events_test

import (
	"sync"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/events"
)

// Every subscriber gets every event in order; a subscriber that never
// reads loses only its own events (counted), and neither the publisher nor
// the other subscribers wait for it.
func TestBusSlowSubscriberDelaysNobody(t *testing.T) {
	bus := events.New()
	stuck := bus.Subscribe("webhooks", 4) // never read
	fast := bus.Subscribe("watch", 64)    // smaller than what is published: it must keep reading
	const n, burst = 1000, 32
	var got []events.Event
	read := make(chan int, n)
	var wg sync.WaitGroup
	wg.Go(func() {
		for e := range fast.C() {
			got = append(got, e)
			read <- len(got)
			if len(got) == n {
				return
			}
		}
	})
	start := time.Now()
	for i := 0; i < n; i++ {
		bus.Publish(events.SecretPut{Name: "a/b", Ref: "local://a/b#k", Created: i == 0})
		if i%burst == burst-1 { // let the reader catch up, as a real one keeps up
			for r := 0; r < i+1; r = <-read {
			}
		}
	}
	wg.Wait()
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("publishing %d events took %v with a stuck subscriber", n, took)
	}
	if len(got) != n || !got[0].(events.SecretPut).Created || got[1].(events.SecretPut).Created {
		t.Fatalf("fast subscriber got %d events, first %+v", len(got), got[0])
	}
	if stuck.Dropped() != n-4 || fast.Dropped() != 0 {
		t.Fatalf("dropped: stuck %d, fast %d", stuck.Dropped(), fast.Dropped())
	}
	if d := bus.Drops(); d["webhooks"] != n-4 || d["watch"] != 0 {
		t.Fatalf("Drops = %v", d)
	}
	stuck.Close()
	bus.Publish(events.SecretDeleted{Name: "a/b"})
	if stuck.Dropped() != n-4 {
		t.Fatal("a closed subscriber still counts drops")
	}
}

// A nil bus takes events and drops them: parts built without one work.
func TestNilBus(t *testing.T) {
	var bus *events.Bus
	bus.Publish(events.PolicyChanged{Name: "p"})
	s := bus.Subscribe("x", 1)
	s.Close()
	if len(bus.Drops()) != 0 {
		t.Fatal("a nil bus reports drops")
	}
}

// Concurrent publishers and subscribers joining and leaving: no race, no
// panic on a closed subscription.
func TestBusConcurrency(t *testing.T) {
	bus := events.New()
	var wg sync.WaitGroup
	for p := 0; p < 4; p++ {
		wg.Go(func() {
			for i := 0; i < 2000; i++ {
				bus.Publish(events.NewVersion{Ref: "local://a#k", Fingerprint: "f"})
			}
		})
	}
	for s := 0; s < 4; s++ {
		wg.Go(func() {
			for i := 0; i < 50; i++ {
				sub := bus.Subscribe("churn", 8)
				select {
				case <-sub.C():
				case <-time.After(time.Millisecond):
				}
				sub.Close()
			}
		})
	}
	wg.Wait()
}
