package ocspfile

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"

	"github.com/dnsfront/dnsfront/internal/adminapi"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI adds the staple routes to Caddy's admin API:
//
//   - GET /ocsp/: the state of each staple (JSON list of Status);
//   - POST /ocsp/reload: obtain every staple again now (re-read files,
//     regenerate, refetch), then the same list.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.ocsp", New: func() caddy.Module { return new(AdminAPI) }}
}

// Routes implements caddy.AdminRouter.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/ocsp/", Handler: caddy.AdminHandlerFunc(handleList)},
		{Pattern: "/ocsp/reload", Handler: caddy.AdminHandlerFunc(handleReload)},
	}
}

func activeApp() (*App, error) {
	app, err := caddy.ActiveContext().AppIfConfigured("ocsp")
	if err != nil {
		if errors.Is(err, caddy.ErrNotConfigured) {
			return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New("the ocsp app is not configured")}
		}
		return nil, caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	return app.(*App), nil
}

func handleList(w http.ResponseWriter, r *http.Request) error {
	if err := adminapi.Method(r, http.MethodGet); err != nil {
		return err
	}
	if r.URL.Path != "/ocsp/" {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no such route %s", r.URL.Path)}
	}
	app, err := activeApp()
	if err != nil {
		return err
	}
	return adminapi.WriteJSON(w, app.Statuses())
}

func handleReload(w http.ResponseWriter, r *http.Request) error {
	if err := adminapi.Method(r, http.MethodPost); err != nil {
		return err
	}
	app, err := activeApp()
	if err != nil {
		return err
	}
	return adminapi.WriteJSON(w, app.Reload(r.Context()))
}

// Interface guards
var _ caddy.AdminRouter = AdminAPI{}
