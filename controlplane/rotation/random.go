package rotation

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"math/big"
	"strconv"
)

// Random generates a new value from crypto/rand. Parameters:
//
//	format  alphanumeric (default), hex, base64 (URL-safe, unpadded),
//	        base32 or password (upper, lower, digits and symbols, at least
//	        one of each)
//	length  characters, 16 to 4096 (default 32)
type Random struct{}

// The alphabets of the random formats.
const (
	upper   = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	lower   = "abcdefghijklmnopqrstuvwxyz"
	digits  = "0123456789"
	symbols = "!#%+-.:=?@^_~"
)

var randomAlphabets = map[string]string{
	"alphanumeric": upper + lower + digits,
	"hex":          "0123456789abcdef",
	"base64":       upper + lower + digits + "-_",
	"base32":       upper + "234567",
	"password":     upper + lower + digits + symbols,
}

// Check implements Rotator.
func (Random) Check(params map[string]string) error {
	_, _, err := randomParams(params)
	return err
}

func randomParams(params map[string]string) (format string, length int, err error) {
	format, length = "alphanumeric", 32
	for k, v := range params {
		switch k {
		case "format":
			if _, ok := randomAlphabets[v]; !ok {
				return "", 0, fmt.Errorf("random: format %.32q: want alphanumeric, hex, base64, base32 or password", v)
			}
			format = v
		case "length":
			n, err := strconv.Atoi(v)
			if err != nil || n < 16 || n > 4096 {
				return "", 0, fmt.Errorf("random: length %.32q: want a number of characters from 16 to 4096", v)
			}
			length = n
		default:
			return "", 0, fmt.Errorf("random: unknown parameter %.32q (known: format, length)", k)
		}
	}
	return format, length, nil
}

// Next implements Rotator.
func (Random) Next(_ context.Context, req Request) ([]byte, error) {
	format, length, err := randomParams(req.Params)
	if err != nil {
		return nil, err
	}
	alphabet := randomAlphabets[format]
	for {
		out, err := randomString(alphabet, length)
		if err != nil {
			return nil, fmt.Errorf("random: %w", err)
		}
		if format != "password" || hasEveryClass(out) {
			return out, nil
		}
		clear(out)
	}
}

// randomString draws length characters of alphabet uniformly.
func randomString(alphabet string, length int) ([]byte, error) {
	out := make([]byte, length)
	n := big.NewInt(int64(len(alphabet)))
	for i := range out {
		j, err := rand.Int(rand.Reader, n)
		if err != nil {
			return nil, err
		}
		out[i] = alphabet[j.Int64()]
	}
	return out, nil
}

func hasEveryClass(b []byte) bool {
	for _, class := range []string{upper, lower, digits, symbols} {
		if !bytes.ContainsAny(b, class) {
			return false
		}
	}
	return true
}
