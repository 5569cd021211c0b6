package httpapi

import (
	"context"
	"net/http"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

// Sites is site-local sharing: each site's figures, and its gossip key.
type Sites interface {
	Sites() []api.Site
	RotateKey(ctx context.Context, site string) (string, error)
}

func (a *API) handleListSites(w http.ResponseWriter, _ *http.Request) {
	list := []api.Site{}
	if a.opts.Sites != nil {
		list = append(list, a.opts.Sites.Sites()...)
	}
	writeJSON(w, http.StatusOK, list)
}

func (a *API) handleRotateSiteKey(w http.ResponseWriter, r *http.Request) {
	if a.opts.Sites == nil {
		writeError(w, api.Errorf(api.ErrUnavailable, "this control plane does not run site-local sharing"))
		return
	}
	site := r.PathValue("site")
	id, err := a.opts.Sites.RotateKey(r.Context(), site)
	if err != nil {
		a.logIfInternal(err, "rotate site key")
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.RotateKeyResult{Site: site, KeyID: id})
}
