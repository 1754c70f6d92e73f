package backend

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/secretplane/secretplane/controlplane/secretref"
)

// SelectField extracts ref's field from a key/value or JSON value: a plain
// field name is a top-level key; a JSON pointer (RFC 6901) walks objects
// and arrays. The selected value must be a string (returned as its bytes)
// or a number or boolean (returned as its JSON text). Without a field the
// whole raw value is returned. Errors name the ref, never the value.
func SelectField(ref secretref.Ref, doc map[string]any, raw []byte) ([]byte, error) {
	if ref.Field == "" {
		return checkValue(ref, raw)
	}
	var cur any = doc
	tokens := []string{ref.Field}
	if strings.HasPrefix(ref.Field, "/") {
		tokens = strings.Split(ref.Field[1:], "/")
		for i, t := range tokens {
			tokens[i] = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
		}
	}
	for _, tok := range tokens {
		switch node := cur.(type) {
		case map[string]any:
			next, ok := node[tok]
			if !ok {
				return nil, fmt.Errorf("%s: field %q: %w", ref, tok, ErrNotFound)
			}
			cur = next
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(node) {
				return nil, fmt.Errorf("%s: index %q: %w", ref, tok, ErrNotFound)
			}
			cur = node[i]
		default:
			return nil, fmt.Errorf("%s: %q is below a value that is not an object: %w", ref, tok, ErrNotFound)
		}
	}
	switch v := cur.(type) {
	case string:
		return checkValue(ref, []byte(v))
	case json.Number, float64, bool:
		return []byte(fmt.Sprint(v)), nil
	default:
		return nil, fmt.Errorf("%s: the selected field is not a string, number or boolean: %w", ref, ErrInvalidValue)
	}
}

// checkValue enforces the size bound and UTF-8 (secret values travel in
// text protocols: SDS generic secrets, env files).
func checkValue(ref secretref.Ref, b []byte) ([]byte, error) {
	if len(b) > MaxValueBytes {
		return nil, fmt.Errorf("%s: value is %d bytes; the limit is %d: %w", ref, len(b), MaxValueBytes, ErrInvalidValue)
	}
	if !utf8.Valid(b) {
		return nil, fmt.Errorf("%s: value is not valid UTF-8: %w", ref, ErrInvalidValue)
	}
	return b, nil
}
