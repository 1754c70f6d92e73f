package paging

import "testing"

func FuzzPageToken(f *testing.F) {
	f.Add("", "a/", "a/b")
	f.Add("cDEAYS8AYS9i", "a/", "")
	f.Add("!!", "", "")
	f.Fuzz(func(t *testing.T, tok, prefix, after string) {
		// Any token: decoding never panics, and what it yields is a valid
		// name prefix.
		if got, err := decodePageToken(tok, prefix); err == nil && got != "" {
			if err := checkAfter(got); err != nil {
				t.Fatalf("decoded an invalid position %q: %v", got, err)
			}
		}
		// Tokens we issue decode to what we put in.
		if checkAfter(after) != nil || checkAfter(prefix) != nil {
			return
		}
		got, err := decodePageToken(encodePageToken(prefix, after), prefix)
		if err != nil || got != after {
			t.Fatalf("round trip (%q, %q) -> %q, %v", prefix, after, got, err)
		}
	})
}
