package broker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// TLSConfig builds the listener's TLS configuration from PEM files:
// certFile/keyFile are the broker's certificate chain and key; clientCAFile,
// if set, turns on mutual TLS: every client must present a certificate
// issued by one of its CAs, whose subject common name equals the client's
// MQTT client id and username (checked at CONNECT).
func TLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("broker: tls: both a certificate and a key file are needed")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("broker: tls: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("broker: tls: client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("broker: tls: client CA %s holds no PEM certificate", clientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// certIdentityMatches reports whether a client's TLS certificate, if it
// presented one, names user as its subject common name. A client without
// a certificate passes (the listener's ClientAuth decides whether one is
// required); a certificate for another identity does not, so one device's
// certificate cannot open another device's session.
func certIdentityMatches(cl *mqtt.Client, user string) bool {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return true
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return true
	}
	return st.PeerCertificates[0].Subject.CommonName == user
}
