package store

import (
	"context"
	"time"
)

// Delivery states.
const (
	DeliveryPending   = "pending"
	DeliveryDelivered = "delivered"
	DeliveryDead      = "dead"
)

// DeliveryQuery selects deliveries, newest first.
type DeliveryQuery struct {
	Webhook string // exact match when set
	State   string // exact match when set: pending, delivered or dead
	Limit   int    // must be > 0
}

// DeliverySummary is one webhook's outbox at a glance.
type DeliverySummary struct {
	Webhook                  string
	Pending, Delivered, Dead int
	// LastError is the newest error still recorded on one of its
	// deliveries (a pending one's last failed attempt, a dead one's final
	// one; a delivered one keeps none), recorded at LastErrorTime.
	LastError     string
	LastErrorTime time.Time
	// LastDelivered is when one of its deliveries last succeeded (zero:
	// never).
	LastDelivered time.Time
}

// DeliveryReader reads the webhooks' outbox for operators.
type DeliveryReader interface {
	// QueryDeliveries returns the deliveries q selects, newest first.
	QueryDeliveries(ctx context.Context, q DeliveryQuery) ([]Delivery, error)
	// SummarizeDeliveries returns a summary for every webhook that has
	// deliveries, by webhook name. It reads the whole outbox once.
	SummarizeDeliveries(ctx context.Context) ([]DeliverySummary, error)
}
