// Package paging turns list requests (prefix, page size, page token) into
// store queries and pages back into next-page tokens. Tokens are opaque to
// clients and bound to the prefix they were issued for.
package paging

import (
	"encoding/base64"
	"errors"
	"strings"

	"github.com/secretplane/secretplane/controlplane/validate"
	"github.com/secretplane/secretplane/store"
)

// Page sizes.
const (
	DefaultSize = 100
	MaxSize     = 1000
)

// Request asks for one page of objects.
type Request struct {
	Prefix    string
	PageSize  int    // 0 means DefaultSize; larger than MaxSize means MaxSize
	PageToken string // from the previous page
}

// Query validates a list request and turns it into a store query that
// asks for one more item than the page holds, to learn whether more follow.
func Query(r Request) (store.ListQuery, error) {
	var c validate.Collector
	c.Add("prefix", validate.NamePrefix(r.Prefix))
	size := r.PageSize
	switch {
	case size < 0:
		c.Addf("page_size", "must not be negative")
	case size == 0:
		size = DefaultSize
	case size > MaxSize:
		size = MaxSize
	}
	after := ""
	if r.PageToken != "" {
		var err error
		after, err = decodePageToken(r.PageToken, r.Prefix)
		c.Add("page_token", err)
	}
	if err := c.Err(); err != nil {
		return store.ListQuery{}, err
	}
	return store.ListQuery{Prefix: r.Prefix, After: after, Limit: size + 1}, nil
}

// Page returns at most the requested page of items (the store was asked
// for one more) and the token of the next page, "" on the last.
func Page[T any](items []T, q store.ListQuery, name func(T) string) ([]T, string) {
	if len(items) < q.Limit {
		return items, ""
	}
	items = items[:q.Limit-1]
	return items, encodePageToken(q.Prefix, name(items[len(items)-1]))
}

// Page tokens bind the prefix they were issued for to the last name seen, so
// a token cannot be replayed against another listing. Names and prefixes
// never contain NUL.
const pageTokenVersion = "p1"

func encodePageToken(prefix, after string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenVersion + "\x00" + prefix + "\x00" + after))
}

var errBadPageToken = errors.New("is not a page token issued for this listing")

func decodePageToken(tok, prefix string) (string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", errBadPageToken
	}
	parts := strings.Split(string(raw), "\x00")
	if len(parts) != 3 || parts[0] != pageTokenVersion {
		return "", errBadPageToken
	}
	if parts[1] != prefix {
		return "", errors.New("was issued for another prefix; keep the request unchanged between pages")
	}
	if checkAfter(parts[2]) != nil {
		return "", errBadPageToken
	}
	return parts[2], nil
}

// checkAfter validates a listing position taken from a page token.
func checkAfter(s string) error { return validate.NamePrefix(s) }
