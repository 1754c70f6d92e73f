package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/secretplane/secretplane/client"
)

// A service reads its database password. In production the identity comes
// from the SPIRE agent (WorkloadAPI: "unix:///run/spire/agent.sock") or
// from the SVID files spiffe-helper writes; here from a test CA.
func ExampleClient_Get() {
	srv, err := newServer(time.Minute) // a real secretplane server, in-process
	if err != nil {
		log.Fatal(err)
	}
	defer srv.close()
	if err := srv.register("payments/db", "correct-horse", "/payments/api", "read"); err != nil {
		log.Fatal(err)
	}
	id, err := srv.workload("/payments/api")
	if err != nil {
		log.Fatal(err)
	}

	ctx := context.Background()
	c, err := client.New(ctx, client.Config{Address: srv.addr, ServerID: srv.serverID, Source: id})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	db, err := c.Get(ctx, "payments/db")
	if err != nil {
		log.Fatal(err) // fail closed: no password, no start
	}
	fmt.Printf("got %s version %s (%d bytes)\n", db.Name, db.Version, len(db.Value))
	// Output: got payments/db version 1 (13 bytes)
}

// A service keeps its API key current and swaps it in when it rotates.
func ExampleClient_Watch() {
	srv, err := newServer(time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer srv.close()
	if err := srv.register("payments/api-key", "key-one", "/payments/api", "read", "watch"); err != nil {
		log.Fatal(err)
	}
	id, err := srv.workload("/payments/api")
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	c, err := client.New(ctx, client.Config{Address: srv.addr, ServerID: srv.serverID, Source: id})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	rotated := make(chan struct{})
	w, err := c.Watch(ctx, []string{"payments/api-key"}, func(ctx context.Context, old, new client.Secret) error {
		fmt.Printf("rotating %s: version %s -> %s\n", new.Name, old.Version, new.Version)
		// Apply new.Value here; return an error if it cannot be used, and
		// the server records the failed rollout for this service.
		close(rotated)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	cur, _ := w.Get("payments/api-key")
	fmt.Printf("started with version %s\n", cur.Version)

	if err := srv.write("payments/api-key", "key-two"); err != nil { // the backend gets a new version
		log.Fatal(err)
	}
	<-rotated
	// Output:
	// started with version 1
	// rotating payments/api-key: version 1 -> 2
}
