// Package deploytest tests the deployment kit in deploy/: the agent tarball
// and install.sh (installed into a temporary root and run against a real
// control plane), the arm64 build under qemu-user (make test-cross), the
// systemd units, mosquitto with the generated ACL, and the compose,
// Kubernetes, Prometheus and Grafana files. It has no code of its own; no
// package imports it.
package deploytest
