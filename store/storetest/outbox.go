package storetest

import (
	"reflect"
	"testing"
	"time"

	"github.com/secretplane/secretplane/store"
)

// testDeliveryReads: the outbox as operators read it, filtered by webhook
// and state and summarised per webhook.
func testDeliveryReads(t *testing.T, s store.Store) {
	c := ctx(t)
	if sum, err := s.SummarizeDeliveries(c); err != nil || len(sum) != 0 {
		t.Fatalf("summary of an empty outbox: %+v %v", sum, err)
	}
	future := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)
	var ds []store.Delivery
	for _, id := range []string{"ev1", "ev2", "ev3", "ev4"} {
		for _, hook := range []string{"hook-b", "hook-a"} {
			ds = append(ds, store.Delivery{ID: id + "/" + hook, Webhook: hook, EventType: "io.secretplane.rotation.completed", Body: []byte(`{"id":"` + id + `"}`), NextAttempt: future})
		}
	}
	// One at a time: their create times order them.
	for _, d := range ds {
		if err := s.EnqueueDeliveries(c, []store.Delivery{d}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	update := func(id, state string, attempts int, lastError string) {
		t.Helper()
		time.Sleep(time.Millisecond) // distinct update times
		if err := s.UpdateDelivery(c, store.Delivery{ID: id, State: state, Attempts: attempts, LastError: lastError, NextAttempt: future}); err != nil {
			t.Fatal(err)
		}
	}
	update("ev1/hook-a", store.DeliveryDelivered, 1, "")
	update("ev2/hook-a", store.DeliveryDead, 8, "POST answered HTTP 500")
	update("ev3/hook-a", store.DeliveryPending, 2, "POST answered HTTP 503")
	update("ev2/hook-b", store.DeliveryDelivered, 1, "")
	update("ev1/hook-b", store.DeliveryDelivered, 3, "") // after failing: its error is cleared

	ids := func(ds []store.Delivery) []string {
		out := []string{}
		for _, d := range ds {
			out = append(out, d.ID)
		}
		return out
	}
	cases := []struct {
		name string
		q    store.DeliveryQuery
		want []string
	}{
		{"one webhook, newest first", store.DeliveryQuery{Webhook: "hook-a", Limit: 10}, []string{"ev4/hook-a", "ev3/hook-a", "ev2/hook-a", "ev1/hook-a"}},
		{"limit", store.DeliveryQuery{Webhook: "hook-a", Limit: 2}, []string{"ev4/hook-a", "ev3/hook-a"}},
		{"pending", store.DeliveryQuery{Webhook: "hook-a", State: store.DeliveryPending, Limit: 10}, []string{"ev4/hook-a", "ev3/hook-a"}},
		{"dead", store.DeliveryQuery{Webhook: "hook-a", State: store.DeliveryDead, Limit: 10}, []string{"ev2/hook-a"}},
		{"delivered, every webhook", store.DeliveryQuery{State: store.DeliveryDelivered, Limit: 10}, []string{"ev2/hook-b", "ev1/hook-a", "ev1/hook-b"}},
		{"state and limit", store.DeliveryQuery{State: store.DeliveryDelivered, Limit: 1}, []string{"ev2/hook-b"}},
		{"no such webhook", store.DeliveryQuery{Webhook: "hook-c", Limit: 10}, []string{}},
		{"no such state", store.DeliveryQuery{State: "lost", Limit: 10}, []string{}},
	}
	for _, tc := range cases {
		got, err := s.QueryDeliveries(c, tc.q)
		if err != nil || !reflect.DeepEqual(ids(got), tc.want) {
			t.Errorf("%s: %v %v, want %v", tc.name, ids(got), err, tc.want)
		}
	}
	if _, err := s.QueryDeliveries(c, store.DeliveryQuery{Webhook: "hook-a"}); err == nil {
		t.Error("query without a limit accepted")
	}

	byID := map[string]store.Delivery{}
	all, err := s.QueryDeliveries(c, store.DeliveryQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range all {
		byID[d.ID] = d
	}
	if d := byID["ev3/hook-a"]; len(all) != len(ds) || d.State != store.DeliveryPending || d.Attempts != 2 || d.LastError != "POST answered HTTP 503" ||
		d.Webhook != "hook-a" || d.EventType != "io.secretplane.rotation.completed" || string(d.Body) != `{"id":"ev3"}` || !d.NextAttempt.Equal(future) {
		t.Fatalf("query all: %d deliveries; ev3/hook-a %+v", len(all), d)
	}
	sum, err := s.SummarizeDeliveries(c)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.DeliverySummary{
		{Webhook: "hook-a", Pending: 2, Delivered: 1, Dead: 1, LastError: "POST answered HTTP 503",
			LastErrorTime: byID["ev3/hook-a"].UpdateTime, LastDelivered: byID["ev1/hook-a"].UpdateTime},
		{Webhook: "hook-b", Pending: 2, Delivered: 2, LastDelivered: byID["ev1/hook-b"].UpdateTime},
	}
	if !reflect.DeepEqual(sum, want) {
		t.Fatalf("summary:\n got %+v\nwant %+v", sum, want)
	}
	if want[0].LastErrorTime.IsZero() || !want[0].LastDelivered.Before(want[0].LastErrorTime) {
		t.Fatalf("update times: %+v", want[0])
	}
}
