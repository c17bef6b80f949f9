package usagejs_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qyai/qyai/pkg/usage"
	usagejs "github.com/qyai/qyai/pkg/usage/jetstream"
)

func connect(t *testing.T) jetstream.JetStream {
	t.Helper()
	srv := scripts.NATSProcess(t)
	nc, err := nats.Connect(srv.URL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func TestEnsureStreamIdempotentAndRacing(t *testing.T) {
	js := connect(t)
	ctx := t.Context()
	// Gateways and meters start together: they race on the same config.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := usagejs.EnsureStream(ctx, js, usagejs.StreamConfig{})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("ensure stream: %v", err)
		}
	}
	s, err := usagejs.EnsureStream(ctx, js, usagejs.StreamConfig{Duplicates: time.Minute})
	if err != nil {
		t.Fatalf("update stream: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := info.Config
	if c.Name != usage.StreamName || len(c.Subjects) != 1 || c.Subjects[0] != usage.SubjectFilter ||
		c.Retention != jetstream.WorkQueuePolicy || c.Discard != jetstream.DiscardNew ||
		c.Storage != jetstream.FileStorage || c.Replicas != 1 || c.MaxAge != 0 || c.Duplicates != time.Minute {
		t.Errorf("USAGE config = %+v", c)
	}
	dlq, err := js.Stream(ctx, usagejs.DeadLetterStreamName)
	if err != nil {
		t.Fatalf("dead-letter stream: %v", err)
	}
	dc := dlq.CachedInfo().Config
	if len(dc.Subjects) != 1 || dc.Subjects[0] != usage.DeadLetterSubject || dc.Retention != jetstream.LimitsPolicy ||
		dc.Discard != jetstream.DiscardNew || dc.MaxAge != 0 {
		t.Errorf("USAGE_DLQ config = %+v", dc)
	}

	// The event id deduplicates within the window.
	for range 2 {
		if _, err := js.Publish(ctx, usage.Subject, []byte(`{}`), jetstream.WithMsgID("evt-1")); err != nil {
			t.Fatal(err)
		}
	}
	if info, _ := s.Info(ctx); info.State.Msgs != 1 {
		t.Errorf("USAGE holds %d messages after a duplicate publish, want 1", info.State.Msgs)
	}
}

func TestEnsureStreamDiscardNewWhenFull(t *testing.T) {
	js := connect(t)
	ctx := t.Context()
	if _, err := usagejs.EnsureStream(ctx, js, usagejs.StreamConfig{MaxMsgs: 2}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := js.Publish(ctx, usage.Subject, []byte(`{}`)); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	// Full: the publisher is told (and spools) instead of the oldest,
	// unbilled event being dropped.
	if _, err := js.Publish(ctx, usage.Subject, []byte(`{}`)); err == nil {
		t.Fatal("publish into a full USAGE stream succeeded, want an error")
	}
	s, _ := js.Stream(ctx, usage.StreamName)
	if m, err := s.GetMsg(ctx, 1); err != nil || m == nil {
		t.Errorf("first message gone after the stream filled up: %v", err)
	}
}

func TestStreamConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     usagejs.StreamConfig
		wantErr bool
	}{
		{name: "zero is the local default", cfg: usagejs.StreamConfig{}},
		{name: "cluster", cfg: usagejs.StreamConfig{Replicas: 3, MaxBytes: 10 << 30}},
		{name: "unlimited", cfg: usagejs.StreamConfig{MaxBytes: -1, MaxMsgs: -1, DeadLetterMaxBytes: -1}},
		{name: "too many replicas", cfg: usagejs.StreamConfig{Replicas: 7}, wantErr: true},
		{name: "negative replicas", cfg: usagejs.StreamConfig{Replicas: -1}, wantErr: true},
		{name: "negative window", cfg: usagejs.StreamConfig{Duplicates: -time.Second}, wantErr: true},
		{name: "bad max bytes", cfg: usagejs.StreamConfig{MaxBytes: -2}, wantErr: true},
		{name: "window beyond max age", cfg: usagejs.StreamConfig{MaxAge: time.Minute, Duplicates: time.Hour}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); (err != nil) != tc.wantErr {
				t.Fatalf("Validate() = %v, want error %v", err, tc.wantErr)
			}
		})
	}
}

func TestEnsureStreamRejectsInvalidConfig(t *testing.T) {
	js := connect(t)
	_, err := usagejs.EnsureStream(t.Context(), js, usagejs.StreamConfig{Replicas: 9})
	if err == nil {
		t.Fatal("EnsureStream accepted 9 replicas")
	}
	if _, err := js.Stream(t.Context(), usage.StreamName); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("stream created despite an invalid config: %v", err)
	}
}
