package consumers

import (
	"strings"
	"unicode/utf8"

	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/validate"
)

// MaxAckText bounds the failure text kept for an acknowledgement.
const MaxAckText = 512

// AckText is what the registry may keep of a consumer's failure text
// (a Watch ack's error, an SDS NACK's error detail): the text, cut to
// MaxAckText bytes, unless it could hold a secret: one of the values the
// consumer was delivered (the new one, or the one it replaced), anything
// that looks like a secret, or control characters. Every transport that
// takes acknowledgements passes their text through it.
func AckText(text string, delivered ...[]byte) string {
	if text == "" {
		return ""
	}
	for _, v := range delivered {
		if len(v) > 0 && strings.Contains(text, string(v)) {
			return "[error text withheld: it contains the secret's value]"
		}
	}
	if f, ok := secretref.DetectLiteral(text); ok {
		return "[error text withheld: it looks like a " + f.Kind + "]"
	}
	if validate.HasControl(text) || !utf8.ValidString(text) {
		return "[error text withheld: it has control characters]"
	}
	if len(text) > MaxAckText {
		text = strings.ToValidUTF8(text[:MaxAckText], "") + "..."
	}
	return text
}
