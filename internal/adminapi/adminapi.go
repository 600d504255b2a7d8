// Package adminapi holds what dnsfront's admin API routes share: the
// method check and the JSON answer.
package adminapi

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
)

// Method returns a 405 API error unless r's method is want.
func Method(r *http.Request, want string) error {
	if r.Method != want {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed: use %s", r.Method, want)}
	}
	return nil
}

// WriteJSON answers v as indented JSON.
func WriteJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
