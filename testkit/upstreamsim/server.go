package upstreamsim

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Config.
const (
	DefaultCompletionTokens = 20
	DefaultCacheEntries     = 1 << 16
	DefaultMaxBodyBytes     = 16 << 20
	// ShutdownGrace is how long Serve lets requests in flight finish.
	ShutdownGrace = 5 * time.Second
)

// SystemFingerprint is the system_fingerprint of every answer.
const SystemFingerprint = "fp_qyai_sim"

// Model names the simulator serves, as DeepSeek spells them.
const (
	ModelV4Flash  = "deepseek-v4-flash"
	ModelV4Pro    = "deepseek-v4-pro"
	ModelChat     = "deepseek-chat"
	ModelReasoner = "deepseek-reasoner"
)

// modelsCreated is the "created" of every model in GET /models.
const modelsCreated = 1745452800

// Config configures a Server. The zero value is usable.
type Config struct {
	// APIKey, when not empty, is the key every chat and model request must
	// present as "Authorization: Bearer <APIKey>".
	APIKey string
	// APIKeys are more keys accepted besides APIKey: one per upstream
	// account of a pool in front of one simulator. Each key presented,
	// whichever of them, has a prompt cache of its own, as a DeepSeek
	// account does (see the package comment).
	APIKeys []string
	// DefaultTokens is the completion tokens of an answer when no knob says
	// otherwise (capped by max_tokens). Zero or less means DefaultCompletionTokens.
	DefaultTokens int
	// ThinkingByDefault turns thinking mode on for deepseek-v4-flash and
	// deepseek-v4-pro when the request does not disable it, as the real API
	// does. Off by default so that a plain request has no reasoning.
	ThinkingByDefault bool
	// CacheEntries bounds the prompt cache (prefixes remembered). Zero means
	// DefaultCacheEntries; negative disables the cache (every token a miss).
	CacheEntries int
	// UsageOnFinish puts the usage of every stream that asked for it on the
	// finish chunk, as DeepSeek's real API does, instead of a last chunk with
	// "choices":[] (OpenAI's shape). The usage_on_finish knob sets it per
	// request.
	UsageOnFinish bool
	// MaxBodyBytes bounds a request body. Zero or less means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// InstanceID goes into every completion and tool call id, which are
	// "chatcmpl-<InstanceID>-<n>" and "call_<InstanceID>_<n>" with n counting
	// answers from 1. Empty means 8 random hex digits.
	InstanceID string
	// Logger receives one debug line per chat request and the control API's
	// changes; never a prompt or a completion. Nil discards.
	Logger *slog.Logger
	// Now is the clock for "created". Nil means time.Now.
	Now func() time.Time
}

// Server is the simulator. It implements http.Handler; create it with New.
type Server struct {
	keys           map[string]bool // accepted bearer keys; empty: no auth
	defaultTokens  int
	thinkByDefault bool
	usageOnFinish  bool
	maxBody        int64
	instance       string
	log            *slog.Logger
	now            func() time.Time

	mux    *http.ServeMux
	cache  *prefixCache
	faults faultState
	stats  counters
	seq    atomic.Uint64
	bufs   sync.Pool // *bytes.Buffer for request bodies
	outs   sync.Pool // *[]byte for response bodies

	answerWords []string
	thinkWords  []string
	modelsBody  []byte
}

// New returns a simulator configured by cfg.
func New(cfg Config) *Server {
	s := &Server{
		keys:           map[string]bool{},
		defaultTokens:  cfg.DefaultTokens,
		thinkByDefault: cfg.ThinkingByDefault,
		usageOnFinish:  cfg.UsageOnFinish,
		maxBody:        cfg.MaxBodyBytes,
		instance:       cfg.InstanceID,
		log:            cfg.Logger,
		now:            cfg.Now,
		answerWords:    strings.Fields(answerText),
		thinkWords:     strings.Fields(thinkText),
	}
	for _, k := range append([]string{cfg.APIKey}, cfg.APIKeys...) {
		if k != "" {
			s.keys[k] = true
		}
	}
	if s.defaultTokens <= 0 {
		s.defaultTokens = DefaultCompletionTokens
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	if s.instance == "" {
		var b [4]byte
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
		s.instance = hex.EncodeToString(b[:])
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	entries := cfg.CacheEntries
	if entries == 0 {
		entries = DefaultCacheEntries
	}
	s.cache = newPrefixCache(entries)
	s.bufs.New = func() any { return new(bytes.Buffer) }
	s.modelsBody = modelsJSON()
	s.mux = s.routes()
	return s
}

// routes is the whole route table.
func (s *Server) routes() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("POST /chat/completions", s.handleChat)
	m.HandleFunc("POST /v1/chat/completions", s.handleChat)
	m.HandleFunc("GET /models", s.handleModels)
	m.HandleFunc("GET /v1/models", s.handleModels)
	m.HandleFunc("GET /_sim/healthz", s.handleHealthz)
	m.HandleFunc("GET /_sim/stats", s.handleStats)
	m.HandleFunc("POST /_sim/reset", s.handleReset)
	m.HandleFunc("GET /_sim/faults", s.handleGetFaults)
	m.HandleFunc("POST /_sim/faults", s.handleSetFaults)
	m.HandleFunc("DELETE /_sim/faults", s.handleClearFaults)
	m.HandleFunc("/", s.handleNotFound)
	return m
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats { return s.stats.snapshot() }

// Reset zeroes the counters (except InFlight), clears the global fault and
// empties the prompt cache.
func (s *Server) Reset() {
	s.stats.reset()
	s.faults.clear()
	s.cache.reset()
}

// stopKey is the context key under which Serve tells handlers it is stopping.
type stopKey struct{}

// Serve answers on ln until ctx is done, then shuts down: it stops accepting,
// releases hanging requests and gives the others ShutdownGrace to finish.
// It returns nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := make(chan struct{})
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext: func(net.Listener) context.Context {
			return context.WithValue(context.Background(), stopKey{}, (<-chan struct{})(stop))
		},
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve simulator: %w", err)
	case <-ctx.Done():
	}
	close(stop)
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		_ = hs.Close()
		if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
		return fmt.Errorf("shut down simulator: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve simulator: %w", err)
	}
	return nil
}

// stopping returns the channel Serve closes when it shuts down, or nil.
func stopping(ctx context.Context) <-chan struct{} {
	ch, _ := ctx.Value(stopKey{}).(<-chan struct{})
	return ch
}

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) {
	if _, e := s.authenticate(r); e != nil {
		s.writeErrorBody(w, e)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(s.modelsBody)
}

func (s *Server) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
}

func (s *Server) handleNotFound(w http.ResponseWriter, r *http.Request) {
	s.writeErrorBody(w, &apiError{
		status:  http.StatusNotFound,
		message: "Not Found: " + r.Method + " " + r.URL.Path,
		typ:     "invalid_request_error",
		code:    "invalid_request_error",
	})
}

// authenticate checks the bearer key; a nil error means the request may
// proceed. account is the bearer key presented (empty without one), whose
// prompt cache the request uses: without auth configured every distinct
// key is still an account of its own.
func (s *Server) authenticate(r *http.Request) (account string, _ *apiError) {
	key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if len(s.keys) == 0 {
		return key, nil
	}
	if !ok {
		return "", errAuthFormat()
	}
	if !s.keys[key] {
		return "", errAuthKey(key)
	}
	return key, nil
}

// getBuf and putBuf lend pooled buffers.
func (s *Server) getBuf() *bytes.Buffer {
	b := s.bufs.Get().(*bytes.Buffer)
	b.Reset()
	return b
}

func (s *Server) putBuf(b *bytes.Buffer) {
	if b.Cap() > 1<<20 { // do not keep giants alive
		return
	}
	s.bufs.Put(b)
}

// modelsJSON renders GET /models once.
func modelsJSON() []byte {
	var b []byte
	b = append(b, `{"object":"list","data":[`...)
	for i, m := range []string{ModelV4Flash, ModelV4Pro, ModelChat, ModelReasoner} {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":"`...)
		b = append(b, m...)
		b = append(b, `","object":"model","created":`...)
		b = appendInt(b, modelsCreated)
		b = append(b, `,"owned_by":"deepseek"}`...)
	}
	return append(b, "]}"...)
}

// knownModel reports whether DeepSeek serves model.
func knownModel(model string) bool {
	switch model {
	case ModelV4Flash, ModelV4Pro, ModelChat, ModelReasoner:
		return true
	}
	return false
}
