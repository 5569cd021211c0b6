package fleet

import (
	"fmt"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/bus"
	"github.com/edgefleet/edgefleet/internal/store"
)

// setPassword gives a registered device a new random password, replacing
// the old one, and returns it.
func (r *Registry) setPassword(id string) (string, error) {
	password, cred, err := r.newCredential()
	if err != nil {
		return "", fmt.Errorf("set password: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.devices[id]
	if e == nil {
		return "", api.Errorf(api.ErrNotFound, "device %q is not registered", id)
	}
	if err := r.kv.SetJSON(prefixCreds+id, &cred, true); err != nil {
		return "", fmt.Errorf("set password %s: %w", id, err)
	}
	e.cred = cred
	e.dev.Revoked = false
	r.credentialsChanged()
	return password, nil
}

// revokeCredential deletes a device's password: AuthenticateDevice refuses
// it from now on (also after a restart), and the device is offline: what
// it may still send through an external broker that has not reloaded yet
// is dropped. The device record stays, so its history remains and it can
// be enrolled again.
func (r *Registry) revokeCredential(id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.devices[id]
	if e == nil {
		return api.Errorf(api.ErrNotFound, "device %q is not registered", id)
	}
	if err := r.kv.Update(func(tx *store.Tx) error { return tx.Delete(prefixCreds + id) }, true); err != nil {
		return fmt.Errorf("revoke %s: %w", id, err)
	}
	e.cred = credential{}
	e.dev.Online, e.dev.Revoked = false, true
	r.credentialsChanged()
	return nil
}

// disconnect closes a device's broker session, when the bus can (the
// embedded broker).
func (f *Fleet) disconnect(id string) bool {
	if d, ok := f.opts.Bus.(bus.Disconnecter); ok {
		return d.Disconnect(id)
	}
	return false
}

// Revoke revokes a device's credentials and disconnects it: it cannot
// reconnect until it is enrolled again.
func (f *Fleet) Revoke(id string) (api.RevokeResult, error) {
	if err := f.reg.revokeCredential(id); err != nil {
		return api.RevokeResult{}, err
	}
	res := api.RevokeResult{ID: id, Disconnected: f.disconnect(id)}
	f.log.Info("device credentials revoked", "device", id, "disconnected", res.Disconnected)
	return res, nil
}
