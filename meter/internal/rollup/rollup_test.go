package rollup

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric/noop"

	"github.com/qyai/qyai/pkg/ledger"
)

// call records what one rollup call was asked.
type call struct {
	before   time.Time
	lookback time.Duration
}

func TestOnce(t *testing.T) {
	now := time.Date(2026, 5, 20, 12, 7, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		full      bool
		results   []ledger.RollupStats
		err       error
		wantCalls int
		wantErr   bool
	}{
		{name: "one call when nothing is pending", results: []ledger.RollupStats{{Buckets: 3}}, wantCalls: 1},
		{name: "repeats while pending", full: true,
			results: []ledger.RollupStats{{Buckets: 5, Pending: true}, {Buckets: 5, Pending: true}, {Buckets: 1}}, wantCalls: 3},
		{name: "error stops the round", results: []ledger.RollupStats{{Pending: true}}, err: errors.New("down"),
			wantCalls: 1, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls []call
			fn := func(_ context.Context, o ledger.RollupOptions) (ledger.RollupStats, error) {
				calls = append(calls, call{o.Before, o.Lookback})
				st := tc.results[min(len(calls), len(tc.results))-1]
				return st, tc.err
			}
			l, err := New(fn, Config{Interval: time.Minute, Settle: 5 * time.Minute}, slog.New(slog.DiscardHandler),
				noop.NewMeterProvider().Meter(""), func() time.Time { return now })
			if err != nil {
				t.Fatal(err)
			}
			err = l.Once(t.Context(), tc.full)
			if (err != nil) != tc.wantErr || len(calls) != tc.wantCalls {
				t.Fatalf("Once = %v after %d calls, want error %v after %d", err, len(calls), tc.wantErr, tc.wantCalls)
			}
			wantLookback := time.Duration(0)
			if tc.full {
				wantLookback = -1
			}
			for _, c := range calls {
				if !c.before.Equal(now.Add(-5*time.Minute)) || c.lookback != wantLookback {
					t.Errorf("call %+v, want before now-settle and lookback %v", c, wantLookback)
				}
			}
		})
	}
}

// TestRunSchedule: the first rollup is full, the next ones look back, and
// a failure does not stop the loop.
func TestRunSchedule(t *testing.T) {
	calls := make(chan call, 100)
	n := 0
	fn := func(_ context.Context, o ledger.RollupOptions) (ledger.RollupStats, error) {
		n++
		calls <- call{o.Before, o.Lookback}
		if n == 2 {
			return ledger.RollupStats{}, errors.New("clickhouse down")
		}
		return ledger.RollupStats{}, nil
	}
	l, err := New(fn, Config{Interval: 10 * time.Millisecond}, slog.New(slog.DiscardHandler), noop.NewMeterProvider().Meter(""), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	var got []time.Duration
	for len(got) < 4 {
		select {
		case c := <-calls:
			got = append(got, c.lookback)
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d rollups ran", len(got))
		}
	}
	cancel()
	<-done
	if got[0] != -1 || got[1] != 0 || got[2] != 0 || got[3] != 0 {
		t.Errorf("lookbacks %v: want the first full (-1), then the default (0)", got)
	}
}

func TestNewRejectsZeroInterval(t *testing.T) {
	if _, err := New(nil, Config{}, slog.New(slog.DiscardHandler), noop.NewMeterProvider().Meter(""), time.Now); err == nil {
		t.Fatal("New accepted a zero interval")
	}
}
