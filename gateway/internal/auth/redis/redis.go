// Package redis is the Redis key store of package auth, and the listener
// that evicts cached keys when admin changes them.
package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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

// Invalidator is what Listen notifies.
type Invalidator interface{ Invalidate(id string) }

// Listen evicts keys named on apikey.ChangedChannel until ctx ends. After
// every (re)subscription it evicts everything, since changes may have been
// missed while the subscription was down.
func Listen(ctx context.Context, rdb goredis.UniversalClient, inv Invalidator, log *slog.Logger) {
	sub := rdb.Subscribe(ctx, apikey.ChangedChannel)
	// Receive blocks in a socket read that ignores ctx: closing the
	// subscription is what ends it.
	stop := context.AfterFunc(ctx, func() { _ = sub.Close() })
	defer stop()
	defer func() { _ = sub.Close() }() // ends the subscription, if ctx has not already
	for {
		msg, err := sub.Receive(ctx)
		if ctx.Err() != nil {
			return
		}
		switch m := msg.(type) {
		case *goredis.Subscription:
			if m.Kind == "subscribe" {
				inv.Invalidate("")
			}
		case *goredis.Message:
			inv.Invalidate(m.Payload)
		}
		if err != nil {
			log.Warn("key change subscription interrupted", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}
