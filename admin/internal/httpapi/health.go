package httpapi

import (
	"context"
	"net/http"

	"github.com/gin-gonic/gin"
)

// healthz says the process is alive; it checks nothing else.
func (a *api) healthz(c *gin.Context) error {
	c.JSON(http.StatusOK, gin.H{"status": "ok"})
	return nil
}

// readyz says whether every dependency answers (Redis, ClickHouse with its
// schema applied), each within its own timeout.
func (a *api) readyz(c *gin.Context) error {
	status, code := "ready", http.StatusOK
	checks := make(map[string]string, len(a.Ready))
	for _, ch := range a.Ready {
		ctx, cancel := context.WithTimeout(c.Request.Context(), ch.Timeout)
		err := ch.Ping(ctx)
		cancel()
		if err != nil {
			checks[ch.Name] = err.Error()
			status, code = "not ready", http.StatusServiceUnavailable
			continue
		}
		checks[ch.Name] = "ok"
	}
	c.JSON(code, gin.H{"status": status, "checks": checks})
	return nil
}
