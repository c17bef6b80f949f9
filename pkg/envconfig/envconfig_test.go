package envconfig_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qyai/qyai/pkg/envconfig"
)

// env is a Lookup over a map: the tests never touch the process environment.
func env(m map[string]string) envconfig.Lookup { return envconfig.Map(m) }

// wantErrs fails unless err mentions every one of want, and no more
// problems than want has (each joined problem is one line).
func wantErrs(t *testing.T, err error, want ...string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("Err() = %v, want nil", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("Err() = nil, want %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Err() = %q, want it to contain %q", err, w)
		}
	}
	if n := len(strings.Split(err.Error(), "\n")); n != len(want) {
		t.Errorf("Err() has %d problems, want %d: %q", n, len(want), err)
	}
}

func TestString(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{name: "unset", env: nil, want: "def"},
		{name: "empty", env: map[string]string{"X": ""}, want: "def"},
		{name: "blank", env: map[string]string{"X": " \t\n"}, want: "def"},
		{name: "set", env: map[string]string{"X": "v"}, want: "v"},
		{name: "trimmed", env: map[string]string{"X": "  v w\r\n"}, want: "v w"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := envconfig.New(env(tt.env))
			if got := r.String("X", "def"); got != tt.want {
				t.Errorf("String = %q, want %q", got, tt.want)
			}
			wantErrs(t, r.Err())
		})
	}
}

func TestGetenv(t *testing.T) {
	r := envconfig.New(envconfig.Getenv(func(name string) string {
		return map[string]string{"A": " a\n", "E": ""}[name]
	}))
	if a, e := r.String("A", "def"), r.String("E", "def"); a != "a" || e != "def" {
		t.Errorf("A = %q, E = %q; want a, def", a, e)
	}
}

func TestNumbers(t *testing.T) {
	tests := []struct {
		name    string
		value   string
		wantInt int
		wantDur time.Duration
		wantErr []string
	}{
		{name: "unset", wantInt: 7, wantDur: time.Second},
		{name: "blank", value: "  ", wantInt: 7, wantDur: time.Second},
		{name: "bad int, duration", value: "5x", wantInt: 7, wantDur: time.Second,
			wantErr: []string{`I: "5x" is not an integer`, `D: "5x" is not a duration`}},
		{name: "bare number is not a duration", value: "5", wantInt: 5, wantDur: time.Second,
			wantErr: []string{`D: "5" is not a duration`}},
		{name: "trimmed", value: " 250ms\n", wantInt: 7, wantDur: 250 * time.Millisecond,
			wantErr: []string{`I: "250ms" is not an integer`}},
		{name: "negative", value: "-3", wantInt: -3, wantDur: time.Second,
			wantErr: []string{`D: "-3" is not a duration`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := envconfig.New(env(map[string]string{"I": tt.value, "D": tt.value}))
			if got := r.Int("I", 7); got != tt.wantInt {
				t.Errorf("Int = %d, want %d", got, tt.wantInt)
			}
			if got := r.Duration("D", time.Second); got != tt.wantDur {
				t.Errorf("Duration = %v, want %v", got, tt.wantDur)
			}
			wantErrs(t, r.Err(), tt.wantErr...)
		})
	}
}

func TestBool(t *testing.T) {
	tests := []struct {
		value   string
		want    bool
		wantErr []string
	}{
		{value: "", want: true},
		{value: "false", want: false},
		{value: " FALSE\n", want: false},
		{value: "0", want: false},
		{value: "t", want: true},
		{value: "yes", want: true, wantErr: []string{`B: "yes" is not a boolean`}},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			r := envconfig.New(env(map[string]string{"B": tt.value}))
			if got := r.Bool("B", true); got != tt.want {
				t.Errorf("Bool = %v, want %v", got, tt.want)
			}
			wantErrs(t, r.Err(), tt.wantErr...)
		})
	}
}

func TestList(t *testing.T) {
	def := []string{"d"}
	tests := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{name: "unset", want: []string{"d"}},
		{name: "blank", env: map[string]string{"L": " "}, want: []string{"d"}},
		{name: "one", env: map[string]string{"L": "a"}, want: []string{"a"}},
		{name: "trimmed, empty items dropped", env: map[string]string{"L": " a , b,, ,c,\n"}, want: []string{"a", "b", "c"}},
		{name: "only commas is an empty list", env: map[string]string{"L": ", ,"}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := envconfig.New(env(tt.env))
			got := r.List("L", def)
			if !slices.Equal(got, tt.want) {
				t.Errorf("List = %q, want %q", got, tt.want)
			}
			if len(got) > 0 {
				got[0] = "changed"
			}
			if def[0] != "d" {
				t.Fatal("List returned the default itself, not a copy")
			}
			wantErrs(t, r.Err())
		})
	}
}

func TestSecret(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	withNewline := file("with-newline", "s3cret\n")
	blank := file("blank", " \n")
	missing := filepath.Join(dir, "missing")

	tests := []struct {
		name         string
		env          map[string]string
		want         string
		wantFromFile bool
		wantErr      []string
	}{
		{name: "unset: default", want: "def"},
		{name: "value, trimmed", env: map[string]string{"S": " s3cret\n"}, want: "s3cret"},
		{name: "file with a newline", env: map[string]string{"S_FILE": withNewline}, want: "s3cret", wantFromFile: true},
		{name: "file path trimmed", env: map[string]string{"S_FILE": withNewline + "\n"}, want: "s3cret", wantFromFile: true},
		{name: "empty value and a file", env: map[string]string{"S": "", "S_FILE": withNewline}, want: "s3cret", wantFromFile: true},
		{name: "both set", env: map[string]string{"S": "other", "S_FILE": withNewline}, want: "def",
			wantErr: []string{"set S or S_FILE, not both"}},
		{name: "file unreadable", env: map[string]string{"S_FILE": missing}, want: "def", wantFromFile: true,
			wantErr: []string{"read S_FILE: open " + missing}},
		{name: "file blank", env: map[string]string{"S_FILE": blank}, want: "def", wantFromFile: true,
			wantErr: []string{"S_FILE: " + blank + " is empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := envconfig.New(env(tt.env))
			if got := r.Secret("S", "def"); got != tt.want {
				t.Errorf("Secret = %q, want %q", got, tt.want)
			}
			wantErrs(t, r.Err(), tt.wantErr...)

			r = envconfig.New(env(tt.env))
			got, fromFile := r.SecretSource("S")
			want := tt.want // SecretSource has no default: "" where Secret gave def
			switch {
			case want == "def":
				want = ""
			case fromFile:
				got = strings.TrimSpace(got) // untrimmed: TestSecretSourceKeepsTheFile
			}
			if got != want || fromFile != tt.wantFromFile {
				t.Errorf("SecretSource = %q, %v; want %q, %v", got, fromFile, want, tt.wantFromFile)
			}
			wantErrs(t, r.Err(), tt.wantErr...)
		})
	}

	t.Run("errors never hold the secret", func(t *testing.T) {
		r := envconfig.New(env(map[string]string{"S": "s3cret", "S_FILE": withNewline}))
		r.Secret("S", "")
		if err := r.Err(); err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Err() = %v", err)
		}
	})
}

// TestSecretSourceKeepsTheFile: a file with a format of its own gets its
// contents as they are, so that its line numbers stay true.
func TestSecretSourceKeepsTheFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens")
	const content = "\n# comment\nalice:a-token\n"
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	r := envconfig.New(env(map[string]string{"S_FILE": file}))
	if got, fromFile := r.SecretSource("S"); got != content || !fromFile {
		t.Errorf("SecretSource = %q, %v", got, fromFile)
	}
	r = envconfig.New(env(map[string]string{"S": "  v\n"}))
	if got, fromFile := r.SecretSource("S"); got != "v" || fromFile {
		t.Errorf("SecretSource = %q, %v", got, fromFile)
	}
	wantErrs(t, r.Err())
}

func TestRequiredSecret(t *testing.T) {
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		env     map[string]string
		want    string
		wantErr []string
	}{
		{name: "missing", wantErr: []string{"S is required: set S or S_FILE"}},
		{name: "blank is missing", env: map[string]string{"S": "\n"}, wantErr: []string{"S is required"}},
		{name: "value", env: map[string]string{"S": "v"}, want: "v"},
		{name: "file", env: map[string]string{"S_FILE": file}, want: "from-file"},
		{name: "both set", env: map[string]string{"S": "v", "S_FILE": file}, wantErr: []string{"not both"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := envconfig.New(env(tt.env))
			if got := r.RequiredSecret("S"); got != tt.want {
				t.Errorf("RequiredSecret = %q, want %q", got, tt.want)
			}
			wantErrs(t, r.Err(), tt.wantErr...)
		})
	}
}

// TestErrJoinsEveryProblem reads a configuration with a problem in every
// kind of variable: Err reports them all, in reading order, one per line,
// and each is an error of its own (errors.Join).
func TestErrJoinsEveryProblem(t *testing.T) {
	r := envconfig.New(env(map[string]string{
		"PORT": "eighty", "TIMEOUT": "soon", "DEBUG": "maybe", "TOKEN": "t", "TOKEN_FILE": "/nonexistent",
	}))
	r.Int("PORT", 80)
	r.Duration("TIMEOUT", time.Second)
	r.Bool("DEBUG", false)
	r.Secret("TOKEN", "")
	r.RequiredSecret("PASSWORD")
	r.Errorf("WEIGHTS: %d weights for %d URLs", 3, 2)
	err := r.Err()
	want := []string{
		`PORT: "eighty" is not an integer`,
		`TIMEOUT: "soon" is not a duration (e.g. 50ms, 2s)`,
		`DEBUG: "maybe" is not a boolean (true or false)`,
		"set TOKEN or TOKEN_FILE, not both",
		"PASSWORD is required: set PASSWORD or PASSWORD_FILE",
		"WEIGHTS: 3 weights for 2 URLs",
	}
	if err == nil || err.Error() != strings.Join(want, "\n") {
		t.Fatalf("Err() =\n%v\nwant\n%s", err, strings.Join(want, "\n"))
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok || len(joined.Unwrap()) != len(want) {
		t.Errorf("Err() is not a join of %d errors: %#v", len(want), err)
	}
}

func TestErrorfWraps(t *testing.T) {
	sentinel := errors.New("sentinel")
	r := envconfig.New(env(nil))
	r.Errorf("X: %w", sentinel)
	if !errors.Is(r.Err(), sentinel) {
		t.Errorf("Err() = %v does not wrap the sentinel", r.Err())
	}
}

func TestNoProblemsIsNil(t *testing.T) {
	r := envconfig.New(env(map[string]string{"I": "1", "D": "1s", "B": "true", "S": "x"}))
	r.Int("I", 0)
	r.Duration("D", 0)
	r.Bool("B", false)
	r.Secret("S", "")
	r.RequiredSecret("S")
	if err := r.Err(); err != nil {
		t.Errorf("Err() = %v, want nil", err)
	}
}
