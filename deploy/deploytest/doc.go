// Package deploytest tests the deployment kit in deploy/: the agent tarball
// and install.sh, the arm64 build under qemu-user, the systemd units,
// mosquitto with the generated ACL, broker sync in each deploy path, the
// compose, Kubernetes, Prometheus and Grafana files, and docs/deploy.md's
// server section, run line by line. It has no code of its own. Imported by
// nothing yet.
package deploytest
