package secretref

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// Characters written as they are in each part of the canonical form; any
// other byte is percent-encoded with upper-case hex.
func locatorSafe(c byte) bool { return unreserved(c) || c == '/' || c == '+' || c == '=' }
func paramSafe(c byte) bool   { return unreserved(c) || c == '/' }
func fieldSafe(c byte) bool   { return unreserved(c) || c == '/' || c == '~' }

func unreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_'
}

func escape(s string, safe func(byte) bool) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if !safe(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s) + 2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if safe(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// unescape decodes %XX sequences. A decoded control character is refused,
// as it would be unescaped.
func unescape(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(s) || !ishex(s[i+1]) || !ishex(s[i+2]) {
			return "", errors.New(`has a "%" not followed by two hex digits`)
		}
		d := unhex(s[i+1])<<4 | unhex(s[i+2])
		if d < 0x20 || d == 0x7f {
			return "", errors.New("has a percent-encoded control character")
		}
		b.WriteByte(d)
		i += 2
	}
	out := b.String()
	if !utf8.ValidString(out) {
		return "", errors.New("percent-encoding decodes to invalid UTF-8")
	}
	return out, nil
}

func ishex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}
