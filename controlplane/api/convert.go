package api

import (
	"strconv"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/secretplane/secretplane/controlplane/catalog"
	"github.com/secretplane/secretplane/controlplane/validate"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// Etags are the store's revision numbers in decimal: opaque to clients,
// unique across objects, and never reused after a delete and re-create.
func etag(rev int64) string { return strconv.FormatInt(rev, 10) }

func parseEtag(field, s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	rev, err := strconv.ParseInt(s, 10, 64)
	if err != nil || rev <= 0 {
		return 0, fieldError(field, "is not an etag issued by this server")
	}
	return rev, nil
}

func secretFromProto(s *spv1.Secret) store.Secret {
	return store.Secret{
		Name:        s.GetName(),
		Ref:         s.GetRef(),
		Description: s.GetDescription(),
		Owner:       s.GetOwner(),
		Required:    s.GetRequired(),
		Labels:      s.GetLabels(),
		Kind:        s.GetKind(),
	}
}

func secretToProto(s store.Secret) *spv1.Secret {
	return &spv1.Secret{
		Name:        s.Name,
		Ref:         s.Ref,
		Description: s.Description,
		Owner:       s.Owner,
		Required:    s.Required,
		Labels:      s.Labels,
		Kind:        s.Kind,
		Etag:        etag(s.Revision),
		CreateTime:  timestamppb.New(s.CreateTime),
		UpdateTime:  timestamppb.New(s.UpdateTime),
	}
}

// configFromProto converts a document; an entry with neither literal nor
// ref set is an empty literal.
func configFromProto(d *spv1.ConfigDocument) store.ConfigDocument {
	out := store.ConfigDocument{
		Name:     d.GetName(),
		Identity: d.GetIdentity(),
		Labels:   d.GetLabels(),
		Entries:  make([]store.ConfigEntry, len(d.GetEntries())),
	}
	for i, e := range d.GetEntries() {
		out.Entries[i] = store.ConfigEntry{Key: e.GetKey(), Literal: e.GetLiteral(), Ref: e.GetRef()}
	}
	return out
}

func configToProto(d store.ConfigDocument) *spv1.ConfigDocument {
	out := &spv1.ConfigDocument{
		Name:       d.Name,
		Identity:   d.Identity,
		Labels:     d.Labels,
		Etag:       etag(d.Revision),
		CreateTime: timestamppb.New(d.CreateTime),
		UpdateTime: timestamppb.New(d.UpdateTime),
		Entries:    make([]*spv1.ConfigEntry, len(d.Entries)),
	}
	for i, e := range d.Entries {
		pe := &spv1.ConfigEntry{Key: e.Key}
		if e.Ref != "" {
			pe.Value = &spv1.ConfigEntry_Ref{Ref: e.Ref}
		} else {
			pe.Value = &spv1.ConfigEntry_Literal{Literal: e.Literal}
		}
		out.Entries[i] = pe
	}
	return out
}

// prefixed re-roots the field paths of a validation error under the
// request field that held the object ("secret.", "config.").
func prefixed(err error, prefix string) error {
	switch e := err.(type) {
	case *validate.Error:
		return e.Prefixed(prefix)
	case *catalog.AccessError:
		return e.Prefixed(prefix)
	}
	return err
}

func consumerToProto(c store.Consumer) *spv1.Consumer {
	out := &spv1.Consumer{
		Secret: c.Secret, Identity: c.Identity, Channel: c.Channel, Node: c.Node,
		FirstSeenTime: timestamppb.New(c.FirstSeen), LastSeenTime: timestamppb.New(c.LastSeen),
		Version: c.Version, AckedVersion: c.AckedVersion, AckError: c.AckError,
	}
	if !c.AckTime.IsZero() {
		out.AckTime = timestamppb.New(c.AckTime)
	}
	return out
}
