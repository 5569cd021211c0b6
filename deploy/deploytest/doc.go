// Package deploytest tests the deployment kit in deploy/: the agent tarball
// and install.sh, the arm64 build under qemu-user, the systemd units,
// mosquitto with the generated ACL, and the compose, Kubernetes, Prometheus
// and Grafana files. It has no code of its own. Imported by nothing yet.
package deploytest
