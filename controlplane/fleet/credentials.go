package fleet

import (
	"slices"
	"strings"

	"github.com/edgefleet/edgefleet/internal/mosquitto"
)

// credentialsChanged records a credential change. Callers hold r.mu.
func (r *Registry) credentialsChanged() {
	r.credGen++
	close(r.credChanged)
	r.credChanged = make(chan struct{})
}

// BrokerCredentials is every device's password as an external mosquitto
// checks it, for its password file.
type BrokerCredentials struct {
	// Generation changes whenever a credential does (per process).
	Generation uint64
	// Changed is closed at the next change after Generation.
	Changed <-chan struct{}
	// Entries are the devices with a password, by id.
	Entries []mosquitto.Entry
	// Legacy counts devices whose credential predates mosquitto hashes:
	// they cannot log in to an external mosquitto until enrolled again.
	Legacy int
	// Bcrypt are the devices with a bcrypt hash (for NATS), by id;
	// NoBcrypt are those with a password but none (registered while
	// the control plane ran the embedded broker, or before bcrypt hashes
	// were kept): they cannot log in to NATS until enrolled again.
	Bcrypt   []mosquitto.Entry
	NoBcrypt []string
}

// BrokerCredentials returns every device password in mosquitto's format.
func (r *Registry) BrokerCredentials() BrokerCredentials {
	r.mu.RLock()
	defer r.mu.RUnlock()
	bc := BrokerCredentials{Generation: r.credGen, Changed: r.credChanged}
	for id, e := range r.devices {
		switch {
		case e.cred.Mosquitto != "":
			bc.Entries = append(bc.Entries, mosquitto.Entry{User: id, Hash: e.cred.Mosquitto})
		case len(e.cred.Hash) > 0:
			bc.Legacy++
		}
		switch {
		case e.cred.Bcrypt != "":
			bc.Bcrypt = append(bc.Bcrypt, mosquitto.Entry{User: id, Hash: e.cred.Bcrypt})
		case len(e.cred.Hash) > 0:
			bc.NoBcrypt = append(bc.NoBcrypt, id)
		}
	}
	slices.SortFunc(bc.Entries, func(a, b mosquitto.Entry) int { return strings.Compare(a.User, b.User) })
	slices.SortFunc(bc.Bcrypt, func(a, b mosquitto.Entry) int { return strings.Compare(a.User, b.User) })
	return bc
}
