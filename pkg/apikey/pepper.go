package apikey

import "github.com/qyai/qyai/pkg/envconfig"

// The pepper (KEY_PEPPER) is read by ReadPepper in every service, the
// same way, so that the gateway and admin always hash keys alike.
const (
	// DevPepper is the pepper of a local development stack: public, so
	// it protects nothing. Only DevModeVar selects it.
	DevPepper = "qyai-dev-pepper-change-me"
	// DevModeVar names the switch (true/1) that lets a service start
	// without KEY_PEPPER, on DevPepper. `make run` sets it when
	// KEY_PEPPER is not given.
	DevModeVar = "QYAI_DEV"
)

// ReadPepper returns KEY_PEPPER, or the contents of the file
// KEY_PEPPER_FILE names, trimmed of surrounding white space (a mounted
// secret often ends in a newline). Without either it records a problem
// in r, unless DevModeVar is on: then it returns DevPepper. The pepper
// itself never appears in a problem.
func ReadPepper(r *envconfig.Reader) string {
	devMode := r.Bool(DevModeVar, false)
	before := r.Problems()
	pepper := r.Secret("KEY_PEPPER", "")
	if r.Problems() > before {
		return "" // KEY_PEPPER_FILE unreadable, or both set: already a problem
	}
	if pepper != "" {
		return pepper
	}
	if devMode {
		return DevPepper
	}
	r.Errorf("KEY_PEPPER is required: set KEY_PEPPER or KEY_PEPPER_FILE (the secret shared by gateway and admin), "+
		"or %s=1 for a local development stack on a public pepper", DevModeVar)
	return ""
}
