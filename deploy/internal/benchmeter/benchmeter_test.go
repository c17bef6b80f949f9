package benchmeter

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLags(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	published := []time.Time{ms(0), ms(10), ms(20), ms(30)}
	for _, tc := range []struct {
		name        string
		samples     []sample
		want        []time.Duration
		first, last time.Time
	}{
		{name: "all seen", samples: []sample{{ms(50), 0}, {ms(100), 2}, {ms(150), 2}, {ms(200), 4}},
			want:  []time.Duration{90 * time.Millisecond, 100 * time.Millisecond, 170 * time.Millisecond, 180 * time.Millisecond},
			first: ms(100), last: ms(200)},
		{name: "one never seen", samples: []sample{{ms(100), 3}},
			want: []time.Duration{80 * time.Millisecond, 90 * time.Millisecond, 100 * time.Millisecond}, first: ms(100), last: ms(100)},
		{name: "more rows than published (another writer) count once", samples: []sample{{ms(60), 9}},
			want:  []time.Duration{30 * time.Millisecond, 40 * time.Millisecond, 50 * time.Millisecond, 60 * time.Millisecond},
			first: ms(60), last: ms(60)},
		{name: "nothing seen", samples: []sample{{ms(60), 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, first, last := lags(published, tc.samples)
			if !slices.Equal(got, tc.want) || !first.Equal(tc.first) || !last.Equal(tc.last) {
				t.Errorf("lags = %v, %v, %v; want %v, %v, %v", got, first, last, tc.want, tc.first, tc.last)
			}
		})
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
		check   func(Config) bool
	}{
		{name: "defaults", check: func(c Config) bool { return slices.Equal(c.Rates, []int{20000, 0}) && c.Duration == 30*time.Second }},
		{name: "rates and pids", args: []string{"-rates", "5000, max", "-pids", "meter=12,nats=13"},
			check: func(c Config) bool { return slices.Equal(c.Rates, []int{5000, 0}) && c.PIDs["nats"] == 13 }},
		{name: "nats cluster", args: []string{"-nats", "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"},
			check: func(c Config) bool { return strings.Count(c.NATSURL, ",") == 2 && c.Replicas == 0 }},
		{name: "bad nats url in list", args: []string{"-nats", "nats://127.0.0.1:4222,127.0.0.1:4223"}, wantErr: "-nats: NATS_URL entry 2"},
		{name: "bad replicas", args: []string{"-replicas", "7"}, wantErr: "-replicas"},
		{name: "bad rate", args: []string{"-rates", "fast"}, wantErr: "-rates"},
		{name: "bad pid", args: []string{"-pids", "meter"}, wantErr: "-pids"},
		{name: "every problem", args: []string{"-rates", "-5", "-duration", "0s"}, wantErr: "-duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(tc.args, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parse = %v, want an error about %s", err, tc.wantErr)
				}
				return
			}
			if err != nil || !tc.check(c) {
				t.Fatalf("parse = %+v, %v", c, err)
			}
		})
	}
}
