package httpapi

import "testing"

func TestWantsCSV(t *testing.T) {
	tests := []struct {
		accept string
		want   bool
	}{
		{"", false},
		{"*/*", false},
		{"application/json", false},
		{"text/csv", true},
		{"TEXT/CSV; charset=utf-8", true},
		{"text/csv, application/json", true},
		{"application/json, text/csv;q=0.8", false},
		{"application/json;q=0.5, text/csv", true},
		{"text/csv;q=0", false},
		{"text/csv;q=0.9, */*;q=1", true},
		{"text/html, text/csv;q=0.1", true},
	}
	for _, tt := range tests {
		t.Run(tt.accept, func(t *testing.T) {
			if got := wantsCSV(tt.accept); got != tt.want {
				t.Errorf("wantsCSV(%q) = %v, want %v", tt.accept, got, tt.want)
			}
		})
	}
}
