// Package redis is the Redis key store of package auth, and the listener
// that evicts cached keys when admin changes them.
package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/qyai/qyai/gateway/internal/auth"
	"github.com/qyai/qyai/pkg/apikey"
)

// Store reads key records written by admin (layout in package apikey).
type Store struct {
	rdb     goredis.UniversalClient
	timeout time.Duration
}

// NewStore returns a store whose every call is bounded by timeout.
func NewStore(rdb goredis.UniversalClient, timeout time.Duration) *Store {
	return &Store{rdb: rdb, timeout: timeout}
}

// Lookup implements auth.Store.
func (s *Store) Lookup(ctx context.Context, hash string) (*apikey.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	b, err := s.rdb.Get(ctx, apikey.AuthKey(hash)).Bytes()
	if errors.Is(err, goredis.Nil) {
		return nil, auth.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("look up key: %w", err)
	}
	var rec apikey.Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("decode key record: %w", err)
	}
	return &rec, nil
}

// Watcher is what Listen notifies: the key changes, and whether the
// subscription is known to deliver them (auth.Verifier implements it).
type Watcher interface {
	Invalidate(id string)
	SetWatched(ok bool)
}

// PingInterval is how long the subscription may stay silent before Listen
// pings it; a ping unanswered for PingTimeout more counts as a dead or
// half-open connection. Detection takes at most the sum.
const (
	PingInterval = 250 * time.Millisecond
	// PingTimeout is longer than the interval: a busy Redis or a loaded
	// host may take a few hundred milliseconds to answer, and a false
	// alarm costs a resubscription and a lookup of every cached key.
	PingTimeout = 500 * time.Millisecond
)

// Listen evicts keys named on apikey.ChangedChannel until ctx ends. It
// reports the subscription watched once Redis confirms it, and unwatched
// as soon as the connection fails or stops answering pings; it then
// subscribes again on a fresh connection. After every subscription it has
// every cached key looked up again (Invalidate("")), since changes may have
// been missed while it was down.
func Listen(ctx context.Context, rdb goredis.UniversalClient, w Watcher, log *slog.Logger) {
	for {
		err := listenOnce(ctx, rdb, w)
		w.SetWatched(false)
		if ctx.Err() != nil {
			return
		}
		log.Warn("key change subscription interrupted", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// listenOnce runs one subscription until it fails or stops answering.
func listenOnce(ctx context.Context, rdb goredis.UniversalClient, w Watcher) error {
	sub := rdb.Subscribe(ctx, apikey.ChangedChannel)
	// Receive blocks in a socket read that ignores ctx: closing the
	// subscription is what ends it.
	stop := context.AfterFunc(ctx, func() { _ = sub.Close() })
	defer stop()
	defer func() { _ = sub.Close() }() // ends the subscription, if ctx has not already
	pinged := false
	for {
		wait := PingInterval
		if pinged {
			wait = PingTimeout
		}
		msg, err := sub.ReceiveTimeout(ctx, wait)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			if pinged {
				return fmt.Errorf("no answer to ping within %v: %w", PingTimeout, err)
			}
			if err := sub.Ping(ctx); err != nil {
				return fmt.Errorf("ping: %w", err)
			}
			pinged = true
			continue
		case err != nil:
			return fmt.Errorf("receive: %w", err)
		}
		pinged = false
		switch m := msg.(type) {
		case *goredis.Subscription:
			if m.Kind == "subscribe" {
				w.Invalidate("")
				w.SetWatched(true)
			}
		case *goredis.Message:
			w.Invalidate(m.Payload)
		}
	}
}
