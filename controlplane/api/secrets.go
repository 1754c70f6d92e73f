package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/secretplane/secretplane/controlplane/access"
	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/catalog"
	"github.com/secretplane/secretplane/controlplane/consumers"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/validate"
	"github.com/secretplane/secretplane/controlplane/watch"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// MaxResolveNames bounds a batch Resolve and one Watch subscription.
const MaxResolveNames = 100

// MaxWatchNames bounds the names one Watch stream may hold.
const MaxWatchNames = 1000

// Consumers records who reads and watches what (consumers.Registry).
type Consumers interface {
	Seen(identity, secret, channel, version string)
	SeenNode(identity, node, secret, channel, version string)
	AckedNode(identity, node, secret, channel, version, errMsg string)
	Hold(identity, node, secret, channel string) (release func())
}

// SecretsServer implements secretplane.v1.SecretsService. Authorisation of
// Resolve (read on every name) and its audit happen in the interceptor
// before it runs; Watch checks "watch" per name as the stream names them.
type SecretsServer struct {
	spv1.UnimplementedSecretsServiceServer
	catalog   *catalog.Catalog
	resolver  *resolve.Resolver
	hub       *watch.Hub
	consumers Consumers
	authz     *authorizer
	log       *slog.Logger
	drain     <-chan struct{} // closed: the server is shutting down
	streams   *atomic.Int64   // open Watch streams (nil: not counted)
}

// Resolve implements SecretsService.Resolve. The names were validated and
// authorised by the interceptor, and the call is audited with the refs
// resolved once it returns.
func (s *SecretsServer) Resolve(ctx context.Context, req *spv1.ResolveRequest) (*spv1.ResolveResponse, error) {
	names := req.GetNames()
	id, _ := PeerID(ctx)
	call := callOf(ctx)
	resp := &spv1.ResolveResponse{Values: make([]*spv1.SecretValue, 0, len(names))}
	for _, name := range names {
		v, err := s.resolveOne(ctx, call, name)
		if err != nil {
			return nil, err
		}
		resp.Values = append(resp.Values, v)
	}
	for _, v := range resp.Values {
		s.consumers.Seen(id.String(), v.GetName(), consumers.Resolve, v.GetVersion())
	}
	return resp, nil
}

// Watch implements SecretsService.Watch: one goroutine reads requests, this
// one answers them and sends updates, so sends never race.
func (s *SecretsServer) Watch(stream spv1.SecretsService_WatchServer) error {
	ctx := stream.Context()
	if s.streams != nil {
		s.streams.Add(1)
		defer s.streams.Add(-1)
	}
	id, _ := PeerID(ctx)
	w := &watcher{s: s, stream: stream, id: id.String(), sub: s.hub.Subscribe(), sent: map[string][]byte{}, prev: map[string][]byte{}, held: map[string]func(){}}
	defer w.sub.Close()
	defer func() {
		for _, release := range w.held {
			release()
		}
	}()
	reqs, recvErr := make(chan *spv1.WatchRequest), make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.drain:
			return status.Error(codes.Unavailable, "the server is shutting down; reconnect")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case req := <-reqs:
			if err := w.handle(ctx, req); err != nil {
				return err
			}
		case <-w.sub.C():
			if err := w.push(ctx); err != nil {
				return err
			}
		}
	}
}

// watcher is one Watch stream's state.
type watcher struct {
	s      *SecretsServer
	stream spv1.SecretsService_WatchServer
	id     string
	node   string // the client's instance (WatchSubscribe.instance)
	sub    *watch.Subscription
	// held releases, per name, the registry's hold of this consumer.
	held map[string]func()
	// sent and prev are, per name, the value last sent and the one before
	// it: what an ack's error text may quote and must not carry.
	sent, prev map[string][]byte
}

// What the audit log calls a Watch stream's steps; the stream itself is
// recorded as SecretsService.Watch when it ends, with how it ended.
const (
	watchSubscribe = "SecretsService.Watch.Subscribe"
	watchPush      = "SecretsService.Watch.Push"
)

func (w *watcher) handle(ctx context.Context, req *spv1.WatchRequest) error {
	s := w.s
	switch m := req.GetRequest().(type) {
	case *spv1.WatchRequest_Subscribe:
		if inst := m.Subscribe.GetInstance(); inst != "" {
			if err := validate.Text(inst, 128); err != nil {
				return status.Errorf(codes.InvalidArgument, "subscribe.instance: %v", err)
			}
			if err := validate.Identifier(inst); err != nil {
				return status.Errorf(codes.InvalidArgument, "subscribe.instance: %v", err)
			}
			if w.node != "" && w.node != inst {
				return status.Error(codes.InvalidArgument, "subscribe.instance: a stream is one instance; it cannot change")
			}
			w.node = inst
		}
		// The guard validates the names and their number, decides, and
		// audits a refusal; what follows is audited with its outcome.
		names := m.Subscribe.GetNames()
		call, err := s.authz.authorizeNames(ctx, watchSubscribe, policy.Watch, "subscribe.names", names)
		if err != nil {
			return err
		}
		var fresh []string
		for _, n := range names {
			if !w.sub.Watching(n) && !slices.Contains(fresh, n) {
				fresh = append(fresh, n)
			}
		}
		if w.sub.Len()+len(fresh) > MaxWatchNames {
			err := status.Errorf(codes.ResourceExhausted, "a watch stream holds at most %d secrets; open another stream", MaxWatchNames)
			if ferr := call.Finish(ctx, outcome(err)); ferr != nil {
				return accessStatus(ctx, ferr)
			}
			return err
		}
		// Every value is resolved, and the subscription audited with its
		// outcome, before the first value leaves.
		values := make([]*spv1.SecretValue, 0, len(fresh))
		for _, n := range fresh {
			v, err := s.resolveOne(ctx, call, n)
			if err != nil {
				if ferr := call.Finish(ctx, outcome(err)); ferr != nil {
					return accessStatus(ctx, ferr)
				}
				return err
			}
			values = append(values, v)
		}
		if err := call.Finish(ctx, audit.OK); err != nil {
			return accessStatus(ctx, err)
		}
		for _, v := range values {
			if err := w.send(v); err != nil {
				return err
			}
		}
		w.sub.Add(fresh...)
		for _, n := range fresh {
			w.held[n] = s.consumers.Hold(w.id, w.node, n, consumers.Watch)
		}
		return nil
	case *spv1.WatchRequest_Ack:
		name := m.Ack.GetName()
		if !w.sub.Watching(name) {
			return status.Errorf(codes.InvalidArgument, "ack.name: this stream does not watch %s", access.Mask(name))
		}
		version := m.Ack.GetVersion()
		if err := validate.Text(version, 256); err != nil || version == "" {
			return status.Error(codes.InvalidArgument, "ack.version: must be the version the stream sent, at most 256 printable bytes")
		}
		s.consumers.AckedNode(w.id, w.node, name, consumers.Watch, version, w.ackError(name, m.Ack.GetError()))
		return nil
	}
	return status.Error(codes.InvalidArgument, "a watch request must carry subscribe or ack")
}

// ackError keeps a client's failure text for the consumer registry unless
// it could hold a secret (consumers.AckText): the value sent or the one it
// replaced among them.
func (w *watcher) ackError(name, text string) string {
	return consumers.AckText(text, w.sent[name], w.prev[name])
}

// push sends the pending updates, checking the grant again for each: a
// revoked grant ends the stream before a new value leaves.
func (w *watcher) push(ctx context.Context) error {
	for _, u := range w.sub.Take() {
		if u.Gone {
			// Deleted: the stream ends as a subscription naming it would.
			return status.Errorf(codes.NotFound, "secret %s was deleted", u.Name)
		}
		call, err := w.s.authz.authorizeNames(ctx, watchPush, policy.Watch, "name", []string{u.Name})
		if err != nil {
			return err
		}
		call.NoteRef(u.Ref)
		if err := call.Finish(ctx, audit.OK); err != nil {
			return accessStatus(ctx, err)
		}
		if err := w.send(valueProto(u.Name, u.Result)); err != nil {
			return err
		}
	}
	return nil
}

func (w *watcher) send(v *spv1.SecretValue) error {
	if err := w.stream.Send(&spv1.WatchResponse{Value: v}); err != nil {
		return err
	}
	w.sub.Sent(v.GetName(), v.GetFingerprint())
	w.prev[v.GetName()], w.sent[v.GetName()] = w.sent[v.GetName()], v.GetValue()
	w.s.consumers.SeenNode(w.id, w.node, v.GetName(), consumers.Watch, v.GetVersion())
	return nil
}

// resolveOne resolves a name for call, noting in its audit event the ref
// the name is bound to.
func (s *SecretsServer) resolveOne(ctx context.Context, call *access.Call, name string) (*spv1.SecretValue, error) {
	ref, canonical, err := s.catalog.LookupBinding(ctx, name)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "secret %s is not registered", name)
		}
		return nil, toStatus(ctx, s.log, err)
	}
	call.NoteRef(canonical)
	res, err := s.resolver.Get(ctx, ref)
	if err != nil {
		return nil, backendStatus(ctx, s.log, name, err)
	}
	return valueProto(name, res), nil
}

func valueProto(name string, res resolve.Result) *spv1.SecretValue {
	v := &spv1.SecretValue{Name: name, Version: res.Version, Value: res.Data, Fingerprint: res.Fingerprint, RefreshTime: timestamppb.New(res.RefreshAt)}
	if !res.ExpiresAt.IsZero() {
		v.ExpireTime = timestamppb.New(res.ExpiresAt)
	}
	return v
}

// backendStatus maps a resolution failure to a status naming the secret
// and its ref (backend errors carry the ref, never the value).
func backendStatus(ctx context.Context, log *slog.Logger, name string, err error) error {
	switch {
	case errors.Is(err, backend.ErrNotFound):
		return status.Errorf(codes.NotFound, "secret %s: %v", name, err)
	case errors.Is(err, backend.ErrPermissionDenied):
		return status.Errorf(codes.PermissionDenied, "secret %s: the backend refused secretplane's credentials: %v", name, err)
	case errors.Is(err, backend.ErrInvalidValue):
		return status.Errorf(codes.FailedPrecondition, "secret %s: %v", name, err)
	case errors.Is(err, resolve.ErrStale), errors.Is(err, backend.ErrUnavailable):
		return status.Errorf(codes.Unavailable, "secret %s: %v", name, err)
	}
	return toStatus(ctx, log, err)
}
