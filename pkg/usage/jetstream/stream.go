// Package usagejs declares the JetStream streams that carry usage events:
// USAGE (usage.SubjectFilter), which gateways publish to and the meter
// consumes, and USAGE_DLQ (usage.DeadLetterSubject), where the meter parks
// messages it cannot store. Gateways and meters both call EnsureStream at
// start; it is idempotent and safe to race.
//
// The package is named usagejs, not jetstream, so that it can sit next to
// github.com/nats-io/nats.go/jetstream without an alias.
//
// Retention is chosen so that billing data is never dropped silently:
//
//   - USAGE uses work-queue retention: a message stays until the meter acks
//     it (after the ClickHouse insert), however old it is, and disappears
//     once acked, so the stream holds only the backlog. MaxAge defaults to
//     0 (never expire). When the backlog reaches MaxBytes or MaxMsgs, or the
//     server's JetStream storage is full, the stream refuses NEW messages:
//     publishers get an error and spool the event locally, instead of
//     JetStream deleting an unbilled one (which discard-old would do without
//     telling anyone).
//   - MaxBytes defaults to unlimited, i.e. bounded by the server's
//     max_file_store: JetStream reserves a stream's MaxBytes up front, so a
//     fixed default would fail on a small server and waste a large one.
//     Production sets it explicitly, below max_file_store.
//   - Work-queue retention allows one consumer per subject: all meter
//     replicas share the one durable pull consumer. Another reader (e.g. an
//     analytics export) would source from this stream into its own.
//   - USAGE_DLQ uses limits retention with no age limit and discard-new: dead
//     letters wait for a human. If it is full, the meter leaves the poison
//     message unacked (and retried later) rather than dropping it.
package usagejs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/pkg/usage"
)

// DeadLetterStreamName is the stream that holds usage.DeadLetterSubject.
const DeadLetterStreamName = "USAGE_DLQ"

// Defaults for StreamConfig's zero fields.
const (
	DefaultReplicas           = 1
	DefaultDuplicates         = 2 * time.Minute
	DefaultMaxBytes           = -1 // bounded by the server's max_file_store
	DefaultDeadLetterMaxBytes = -1
)

// StreamConfig tunes the two streams. The zero value is a valid local
// configuration; production sets Replicas to 3.
type StreamConfig struct {
	// Replicas is the number of copies of each stream in a JetStream
	// cluster: 1 on one server, 3 in production. Default 1.
	Replicas int
	// Duplicates is the window of dedup layer 1 (pkg/ledger): a repeated
	// Nats-Msg-Id (the event id) is dropped by the server. Default 2
	// minutes. Duplicates older than the window are collapsed by ClickHouse
	// (ReplacingMergeTree + FINAL).
	Duplicates time.Duration
	// MaxBytes bounds the unconsumed backlog of USAGE; publishes beyond it
	// fail (discard new). 0 or -1: bounded only by the server's storage.
	MaxBytes int64
	// MaxMsgs bounds the backlog in messages; 0 means no bound.
	MaxMsgs int64
	// MaxAge, when non-zero, deletes events older than it even if nobody
	// consumed them. Leave it 0 for billing data; it exists for
	// throwaway environments.
	MaxAge time.Duration
	// DeadLetterMaxBytes bounds USAGE_DLQ (discard new). 0 or -1: bounded
	// only by the server's storage.
	DeadLetterMaxBytes int64
}

// Validate reports every invalid field.
func (c StreamConfig) Validate() error {
	var errs []error
	if c.Replicas < 0 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replicas %d: want 1..5", c.Replicas))
	}
	if c.Duplicates < 0 {
		errs = append(errs, fmt.Errorf("duplicates window %s is negative", c.Duplicates))
	}
	if c.MaxBytes < -1 || c.MaxMsgs < -1 || c.DeadLetterMaxBytes < -1 {
		errs = append(errs, errors.New("max bytes and max msgs must be -1 (unlimited), 0 (default) or positive"))
	}
	if c.MaxAge < 0 {
		errs = append(errs, fmt.Errorf("max age %s is negative", c.MaxAge))
	}
	if c.MaxAge > 0 && c.Duplicates > c.MaxAge {
		errs = append(errs, fmt.Errorf("duplicates window %s exceeds max age %s", c.Duplicates, c.MaxAge))
	}
	return errors.Join(errs...)
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.Replicas == 0 {
		c.Replicas = DefaultReplicas
	}
	if c.Duplicates == 0 {
		c.Duplicates = DefaultDuplicates
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.DeadLetterMaxBytes == 0 {
		c.DeadLetterMaxBytes = DefaultDeadLetterMaxBytes
	}
	return c
}

// UsageStreamConfig returns the JetStream configuration of USAGE for c.
func UsageStreamConfig(c StreamConfig) jetstream.StreamConfig {
	c = c.withDefaults()
	maxMsgs := c.MaxMsgs
	if maxMsgs == 0 {
		maxMsgs = -1
	}
	return jetstream.StreamConfig{
		Name:        usage.StreamName,
		Description: "QYAI usage events, one per upstream request; consumed by the meter",
		Subjects:    []string{usage.SubjectFilter},
		Retention:   jetstream.WorkQueuePolicy,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    c.MaxBytes,
		MaxMsgs:     maxMsgs,
		MaxAge:      c.MaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		Duplicates:  c.Duplicates,
	}
}

// DeadLetterStreamConfig returns the JetStream configuration of USAGE_DLQ for c.
func DeadLetterStreamConfig(c StreamConfig) jetstream.StreamConfig {
	c = c.withDefaults()
	return jetstream.StreamConfig{
		Name:        DeadLetterStreamName,
		Description: "QYAI usage messages the meter could not store, with the reason in " + usage.DeadLetterReasonHeader,
		Subjects:    []string{usage.DeadLetterSubject},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    c.DeadLetterMaxBytes,
		MaxMsgs:     -1,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		Duplicates:  c.Duplicates,
	}
}

// EnsureStream creates or updates USAGE and USAGE_DLQ to match cfg and
// returns USAGE. A changed Replicas is applied in place: a stream that ran
// with 1 copy on a server that has since joined a cluster is raised to 3
// (its backlog and the consumers that inherit the stream's count follow),
// and JetStream copies the data to the new peers. It fails when an existing
// stream cannot be changed in place (storage or retention differ): that
// needs an operator; and when Replicas exceeds the servers (the error says
// so).
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("usage stream config: %w", err)
	}
	if _, err := ensure(ctx, js, DeadLetterStreamConfig(cfg)); err != nil {
		return nil, err
	}
	return ensure(ctx, js, UsageStreamConfig(cfg))
}

func ensure(ctx context.Context, js jetstream.JetStream, sc jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, sc)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		// Another process created it between our update and create.
		s, err = js.UpdateStream(ctx, sc)
	}
	if err != nil {
		return nil, fmt.Errorf("ensure stream %s with %d replicas: %w%s", sc.Name, sc.Replicas, err, replicasHint(err, sc.Replicas))
	}
	return s, nil
}

// JetStream error codes that mean "not enough servers for the replicas asked for".
const (
	errCodeReplicasNotSupported = 10074 // replicas > 1 not supported in non-clustered mode
	errCodeInsufficientResource = 10023 // insufficient resources (fewer servers than replicas)
)

// replicasHint explains the errors JetStream gives when STREAM_REPLICAS asks for more
// copies than there are servers; raising or lowering the count of an existing stream
// is otherwise done in place by the update.
func replicasHint(err error, replicas int) string {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || replicas <= 1 {
		return ""
	}
	switch apiErr.ErrorCode {
	case errCodeReplicasNotSupported:
		return fmt.Sprintf(" (STREAM_REPLICAS=%d needs a JetStream cluster; this server runs alone: set STREAM_REPLICAS=1)", replicas)
	case errCodeInsufficientResource:
		return fmt.Sprintf(" (STREAM_REPLICAS=%d needs at least %d JetStream servers in the cluster, with room in their storage)", replicas, replicas)
	}
	return ""
}
