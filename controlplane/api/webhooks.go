package api

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/secretplane/secretplane/controlplane/access"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// Webhook is a configured receiver as operators see it.
type Webhook struct {
	Name string
	URL  string // as configured; shown as scheme://host/path only
}

// Outbox reads the webhooks' deliveries (store.Store).
type Outbox interface {
	QueryDeliveries(ctx context.Context, q store.DeliveryQuery) ([]store.Delivery, error)
	SummarizeDeliveries(ctx context.Context) ([]store.DeliverySummary, error)
}

// Bounds of ListDeliveries' limit.
const (
	defaultDeliveries = 50
	maxDeliveries     = 1000
)

// WebhookServer implements secretplane.v1.WebhookService; the interceptor
// has decided admin on "*". It never returns an event's body.
type WebhookServer struct {
	spv1.UnimplementedWebhookServiceServer
	hooks  []Webhook
	outbox Outbox
	log    *slog.Logger
}

// NewWebhookServer returns the webhook service over the configured
// webhooks and the outbox (nil: its calls answer Unimplemented).
func NewWebhookServer(hooks []Webhook, outbox Outbox, log *slog.Logger) *WebhookServer {
	return &WebhookServer{hooks: hooks, outbox: outbox, log: log}
}

// ListWebhooks implements WebhookService.ListWebhooks.
func (s *WebhookServer) ListWebhooks(ctx context.Context, _ *spv1.ListWebhooksRequest) (*spv1.ListWebhooksResponse, error) {
	if s.outbox == nil {
		return nil, status.Error(codes.Unimplemented, "webhook deliveries are not readable on this server")
	}
	sums, err := s.outbox.SummarizeDeliveries(ctx)
	if err != nil {
		return nil, toStatus(ctx, s.log, fmt.Errorf("summarize webhook deliveries: %w", err))
	}
	byName := make(map[string]store.DeliverySummary, len(sums))
	for _, sum := range sums {
		byName[sum.Webhook] = sum
	}
	resp := &spv1.ListWebhooksResponse{}
	configured := make(map[string]bool, len(s.hooks))
	for _, h := range s.hooks {
		configured[h.Name] = true
		w := webhookToProto(byName[h.Name])
		w.Name, w.Url, w.Configured = h.Name, displayURL(h.URL), true
		resp.Webhooks = append(resp.Webhooks, w)
	}
	for _, sum := range sums { // by name
		if !configured[sum.Webhook] {
			w := webhookToProto(sum)
			w.Name = sum.Webhook
			resp.Webhooks = append(resp.Webhooks, w)
		}
	}
	return resp, nil
}

// ListDeliveries implements WebhookService.ListDeliveries.
func (s *WebhookServer) ListDeliveries(ctx context.Context, req *spv1.ListDeliveriesRequest) (*spv1.ListDeliveriesResponse, error) {
	if s.outbox == nil {
		return nil, status.Error(codes.Unimplemented, "webhook deliveries are not readable on this server")
	}
	name, limit := req.GetWebhook(), int(req.GetLimit())
	switch {
	case name == "":
		return nil, toStatus(ctx, s.log, fieldError("webhook", "required: the webhook's name (see ListWebhooks)"))
	case limit < 0 || limit > maxDeliveries:
		return nil, toStatus(ctx, s.log, fieldError("limit", fmt.Sprintf("must be between 0 and %d (0: the default, %d)", maxDeliveries, defaultDeliveries)))
	case limit == 0:
		limit = defaultDeliveries
	}
	switch req.GetState() {
	case "", store.DeliveryPending, store.DeliveryDelivered, store.DeliveryDead:
	default:
		return nil, toStatus(ctx, s.log, fieldError("state", "must be pending, delivered or dead"))
	}
	if !s.configured(name) {
		// A webhook removed from the configuration is known while the
		// outbox holds deliveries of it.
		some, err := s.outbox.QueryDeliveries(ctx, store.DeliveryQuery{Webhook: name, Limit: 1})
		if err != nil {
			return nil, toStatus(ctx, s.log, fmt.Errorf("list deliveries of webhook %s: %w", name, err))
		}
		if len(some) == 0 {
			return nil, status.Errorf(codes.NotFound, "webhook %s is not configured and has no deliveries", access.Mask(name))
		}
	}
	ds, err := s.outbox.QueryDeliveries(ctx, store.DeliveryQuery{Webhook: name, State: req.GetState(), Limit: limit})
	if err != nil {
		return nil, toStatus(ctx, s.log, fmt.Errorf("list deliveries of webhook %s: %w", name, err))
	}
	resp := &spv1.ListDeliveriesResponse{Deliveries: make([]*spv1.Delivery, len(ds))}
	for i, d := range ds {
		resp.Deliveries[i] = deliveryToProto(d)
	}
	return resp, nil
}

func (s *WebhookServer) configured(name string) bool {
	for _, h := range s.hooks {
		if h.Name == name {
			return true
		}
	}
	return false
}

func webhookToProto(sum store.DeliverySummary) *spv1.Webhook {
	return &spv1.Webhook{Pending: int64(sum.Pending), Delivered: int64(sum.Delivered), Dead: int64(sum.Dead),
		LastError: redactURLs(sum.LastError), LastErrorTime: optionalTime(sum.LastErrorTime), LastDeliveryTime: optionalTime(sum.LastDelivered)}
}

// deliveryToProto shows a delivery without its body: the event's id,
// rotation and secret are read out of it, nothing else.
func deliveryToProto(d store.Delivery) *spv1.Delivery {
	ev := eventNames(d)
	out := &spv1.Delivery{Id: d.ID, Webhook: d.Webhook, EventId: ev.ID, EventType: d.EventType, RotationId: ev.Data.Rotation, Secret: ev.Data.Secret,
		State: d.State, Attempts: int32(d.Attempts), LastError: redactURLs(d.LastError),
		CreateTime: timestamppb.New(d.CreateTime), UpdateTime: timestamppb.New(d.UpdateTime)}
	if d.State == store.DeliveryPending {
		out.NextAttemptTime = optionalTime(d.NextAttempt)
	}
	return out
}

// event is what a delivery's body (a CloudEvent of controlplane/notify)
// says about itself: names only.
type event struct {
	ID      string `json:"id"`
	Subject string `json:"subject"`
	Data    struct {
		Rotation string `json:"rotation"`
		Secret   string `json:"secret"`
	} `json:"data"`
}

func eventNames(d store.Delivery) event {
	var ev event
	_ = json.Unmarshal(d.Body, &ev) // a body that does not parse names nothing
	if ev.ID == "" {
		ev.ID = strings.TrimSuffix(d.ID, "/"+d.Webhook)
	}
	if ev.Data.Secret == "" {
		ev.Data.Secret = ev.Subject
	}
	return ev
}

func optionalTime(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// displayURL is u as scheme://host/path: a query string or fragment may
// carry a token.
func displayURL(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.Scheme == "" || p.Host == "" {
		return "[unparsable URL]"
	}
	return p.Scheme + "://" + p.Host + p.EscapedPath()
}

// urlPattern finds URLs in an error's text: Go's HTTP client quotes the
// request's URL, query string included, in its errors.
var urlPattern = regexp.MustCompile(`(?i)\bhttps?://[^\s"'<>]+`)

// redactURLs shows every URL in msg as scheme://host/path.
func redactURLs(msg string) string {
	if !strings.Contains(msg, "://") {
		return msg
	}
	return urlPattern.ReplaceAllStringFunc(msg, displayURL)
}
