// Package apikey defines QYAI API keys: how they are generated, how they are
// hashed for storage, and the record layout in Redis that admin writes and
// the gateway reads.
//
// Redis layout (all values JSON-encoded Record unless said otherwise):
//
//	qyai:auth:<hash>     Record, looked up by the gateway from a presented key
//	qyai:key:{<id>}      Record, the admin's canonical copy
//	qyai:keys            set of all key ids
//	qyai:keys:changed    pub/sub channel; message = key id, published on every change
//	qyai:rl:{<id>}               sorted set: the key's RPM window (written by the gateway)
//	qyai:tpm:{<id>}:<minute>     integer: tokens finished in that Unix minute (gateway, keys with a TPM)
//	qyai:quota:{<id>}:<YYYYMM>   integer: requests admitted in that UTC month (gateway);
//	                             admin's billing endpoint reports it as monthly_requests
//
// Keys never leave admin in clear text after creation: only Hash(key) is stored.
package apikey

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/big"
	"strconv"
	"strings"
	"time"
)

// Prefix starts every QYAI API key.
const Prefix = "sk-"

// randomLen is the number of random base62 characters after Prefix
// (48 x log2(62) ~ 285 bits).
const randomLen = 48

const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// Status values of a key.
const (
	StatusActive   = "active"
	StatusDisabled = "disabled"
	StatusRevoked  = "revoked"
)

// ErrMalformed means a presented string cannot be a QYAI key.
var ErrMalformed = errors.New("malformed api key")

// Generate returns a new random key: "sk-" plus 48 base62 characters.
func Generate() (string, error) {
	var b strings.Builder
	b.Grow(len(Prefix) + randomLen)
	b.WriteString(Prefix)
	max := big.NewInt(int64(len(alphabet)))
	for range randomLen {
		n, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", err
		}
		b.WriteByte(alphabet[n.Int64()])
	}
	return b.String(), nil
}

// Hash returns the hex HMAC-SHA256 of key under pepper, the only form in
// which keys are stored. The pepper is a server-side secret shared by the
// gateway and admin; a leaked Redis dump alone cannot be brute-forced against it.
func Hash(pepper []byte, key string) string {
	m := hmac.New(sha256.New, pepper)
	m.Write([]byte(key))
	return hex.EncodeToString(m.Sum(nil))
}

// CheckFormat reports whether s looks like a key this service issued.
func CheckFormat(s string) error {
	if !strings.HasPrefix(s, Prefix) || len(s) < len(Prefix)+32 || len(s) > 128 {
		return ErrMalformed
	}
	for i := len(Prefix); i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
			return ErrMalformed
		}
	}
	return nil
}

// DisplayPrefix is what humans see of a key: "sk-" and three characters,
// then "...", as in the public billing example ("sk-abc...").
func DisplayPrefix(key string) string {
	n := len(Prefix) + 3
	if len(key) < n {
		return key
	}
	return key[:n] + "..."
}

// Record is a key as stored in Redis. It never holds the key itself.
type Record struct {
	ID           string `json:"id"`
	Hash         string `json:"hash"`
	KeyPrefix    string `json:"key_prefix"`
	Name         string `json:"name"`
	Tier         string `json:"tier"`
	RPM          int64  `json:"rpm"`
	MonthlyLimit int64  `json:"monthly_limit"`
	// TPM is an optional tokens-per-minute limit; 0 means none.
	TPM       int64     `json:"tpm,omitempty"`
	Models    []string  `json:"models"`
	Status    string    `json:"status"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Active reports whether the key may be used.
func (r *Record) Active() bool { return r.Status == StatusActive }

// Allows reports whether the key may call the public model id. An empty
// list allows every model.
func (r *Record) Allows(model string) bool {
	if len(r.Models) == 0 {
		return true
	}
	for _, m := range r.Models {
		if m == model {
			return true
		}
	}
	return false
}

// Redis key names; see the package comment.
const (
	keyIDsSet      = "qyai:keys"
	ChangedChannel = "qyai:keys:changed"
)

// AuthKey is the Redis key of the record found by a presented key's hash.
func AuthKey(hash string) string { return "qyai:auth:" + hash }

// RecordKey is the Redis key of the admin's copy of a record. The braces
// are a Redis Cluster hash tag: all per-key state shares one slot.
func RecordKey(id string) string { return "qyai:key:{" + id + "}" }

// IDsKey is the Redis set of all key ids.
func IDsKey() string { return keyIDsSet }

// WindowKey is the Redis key of a key's RPM window.
func WindowKey(id string) string { return "qyai:rl:{" + id + "}" }

// MonthCounterKey is the Redis key counting a key's admitted requests in a
// UTC month ("YYYYMM", see Month).
func MonthCounterKey(id, month string) string { return "qyai:quota:{" + id + "}:" + month }

// TokensKey is the Redis key counting a key's tokens in one minute (Unix
// minutes), for its tokens-per-minute limit.
func TokensKey(id string, minute int64) string {
	return "qyai:tpm:{" + id + "}:" + strconv.FormatInt(minute, 10)
}

// Month is the billing month of t: "YYYYMM" in UTC.
func Month(t time.Time) string { return t.UTC().Format("200601") }
