package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/edgefleet/edgefleet/agent"
)

// runEnroll is `edgefleet-agent enroll`: exchange a one-time enrollment
// token for credentials and write the agent config.
func runEnroll(args []string) int {
	fs := flag.NewFlagSet("edgefleet-agent enroll", flag.ContinueOnError)
	token := fs.String("token", "", "one-time enrollment token (edgefleet device enroll prints it)")
	cp := fs.String("control-plane", "", "control plane API URL, e.g. http://cp.example:8080")
	out := fs.String("config-out", "/etc/edgefleet/agent.yaml", "agent config to write (mode 0600)")
	dataDir := fs.String("data-dir", "/var/lib/edgefleet-agent", "the agent's data_dir in the config")
	inference := fs.String("inference-listen", "127.0.0.1:8081", "the agent's inference_listen in the config (empty disables it)")
	caFile := fs.String("tls-ca-file", "", "CA bundle of a TLS broker (written as tls_ca_file)")
	certFile := fs.String("tls-cert-file", "", "this device's client certificate for mutual TLS (tls_cert_file)")
	keyFile := fs.String("tls-key-file", "", "its private key (tls_key_file)")
	force := fs.Bool("force", false, "replace an existing config file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *token == "" || *cp == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "edgefleet-agent enroll: needs --token and --control-plane, and no arguments")
		return 2
	}
	if !*force {
		if _, err := os.Lstat(*out); err == nil {
			fmt.Fprintf(os.Stderr, "edgefleet-agent enroll: %s exists; pass --force to replace it (the token was not used)\n", *out)
			return 1
		}
	}
	if err := checkWritable(filepath.Dir(*out)); err != nil {
		fmt.Fprintf(os.Stderr, "edgefleet-agent enroll: cannot write %s: %v (the token was not used)\n", *out, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := agent.Enroll(ctx, agent.EnrollOptions{ControlPlane: *cp, Token: *token, DataDir: *dataDir, InferenceListen: *inference,
		TLSCAFile: *caFile, TLSCertFile: *certFile, TLSKeyFile: *keyFile})
	if err != nil {
		fmt.Fprintln(os.Stderr, "edgefleet-agent:", err)
		return 1
	}
	if err := agent.WriteConfig(*out, cfg, *force); err != nil {
		fmt.Fprintln(os.Stderr, "edgefleet-agent:", err, "(the enrollment token is now used: ask for a new one)")
		return 1
	}
	fmt.Printf("enrolled as %s; config written to %s (it holds the password: keep it private)\n", cfg.DeviceID, *out)
	return 0
}

// checkWritable makes sure a file can be created in dir, before a
// single-use token is spent on a config that could not be written.
func checkWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".enroll-check-*")
	if err != nil {
		return err
	}
	name := f.Name()
	_ = f.Close()
	return os.Remove(name)
}
