package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/api"
	"github.com/edgefleet/edgefleet/controlplane/client"
	"github.com/edgefleet/edgefleet/internal/mosquitto"
)

// brokerSyncCmd keeps an external mosquitto's password file and ACL equal
// to the control plane's devices: zero-touch enrollment and revocation
// without restarting the broker.
func (a *app) brokerSyncCmd() *cobra.Command {
	var s mosquittoSync
	var mode, logLevel, logFormat string
	c := &cobra.Command{
		Use:   "sync (--passwd-file FILE [--acl-file FILE] [--include FILE] | --nats-auth-file FILE) [--pid-file FILE | --reload-command CMD]",
		Short: "keep an external mosquitto's password file and ACL, or a NATS node's logins, in step with the control plane",
		Long: `Runs next to mosquitto (as its user) and keeps its password file equal to the control plane's
devices: a device enrolled or added can log in within a second, a revoked one is disconnected.
It long-polls GET /api/v1/broker/mosquitto with a token of role broker, writes the files
atomically (only when they change) and makes mosquitto reread them (SIGHUP to the pid in
--pid-file, or --reload-command); mosquitto 2 then also closes the sessions of logins that are
gone. The control plane's own login (serve --mqtt-username) is not served: mosquitto needs it
before the control plane can connect, so keep it in the --include file, with any logins of
your own; they come first and win over a served line of the same name. When the control plane
cannot be reached, or the token cannot be read yet, and the password file does not exist, the
include file alone is written, so mosquitto and then the control plane can start; the token
(file) is read again on every retry and after the control plane refused it, so broker sync may
start before its token is created. Never edit the written files: run mosquitto_passwd on the
include file instead.

With --nats-auth-file it keeps a NATS node's authorization file instead (GET
/api/v1/broker/nats: bcrypt hashes and deny-by-default permissions for the control plane's
logins and every device) and reloads that node (SIGHUP to the pid in --pid-file, NATS's
pid_file); NATS then closes the connections of logins that are gone. Run one next to every
node of the cluster. The first file comes from edgefleet broker nats-config.`,
		Example: `  edgefleet token create --name mosquitto --role broker      # once, on the control plane
  EDGEFLEET_TOKEN_FILE=/etc/mosquitto/edgefleet.token edgefleet broker sync \
      --api https://edgefleet.example.com:8080 \
      --include /etc/mosquitto/edgefleet-local.passwd \
      --passwd-file /etc/mosquitto/edgefleet.passwd --acl-file /etc/mosquitto/edgefleet.acl \
      --pid-file /run/mosquitto/mosquitto.pid
  EDGEFLEET_TOKEN_FILE=/etc/nats/edgefleet.token edgefleet broker sync \
      --nats-auth-file /etc/nats/edgefleet-auth.conf --pid-file /run/nats/nats.pid`,
		Args: noArgs,
	}
	f := c.Flags()
	f.StringVar(&s.passwdFile, "passwd-file", "", "write mosquitto's password file (its password_file) here (`FILE`)")
	f.StringVar(&s.natsFile, "nats-auth-file", "", "keep a NATS node's authorization file (`FILE`, the one its config includes) instead of mosquitto's files")
	f.StringVar(&s.aclFile, "acl-file", "", "write mosquitto's ACL (its acl_file) here (`FILE`; default: leave the ACL alone)")
	f.StringVar(&s.include, "include", "", "password `FILE` of your own logins (at least the control plane's), copied in first")
	f.StringVar(&s.pidFile, "pid-file", "", "mosquitto's pid_file: send SIGHUP to that process after writing (`FILE`)")
	f.StringVar(&s.reloadCmd, "reload-command", "", "run this shell `COMMAND` after writing instead (e.g. \"systemctl reload mosquitto\")")
	f.StringVar(&mode, "file-mode", "0640", "permission bits of the written files (`MODE`, octal)")
	f.DurationVar(&s.wait, "poll", 30*time.Second, "long-poll `DURATION`: how long one request waits for a change (at most 1m)")
	f.BoolVar(&s.once, "once", false, "write the files once and exit (install scripts, init containers)")
	f.StringVar(&logLevel, "log-level", "info", "log `LEVEL`: debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "log `FORMAT`: text or json")
	enumFlag(c, "log-level", "debug", "info", "warn", "error")
	enumFlag(c, "log-format", "text", "json")
	c.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		switch {
		case s.passwdFile == "" && s.natsFile == "":
			return usagef("broker sync needs --passwd-file (mosquitto's password_file) or --nats-auth-file (a NATS node's authorization file)")
		case s.natsFile != "" && (s.passwdFile != "" || s.aclFile != "" || s.include != ""):
			return usagef("--nats-auth-file keeps a NATS node's logins: --passwd-file, --acl-file and --include are mosquitto's")
		}
		if s.pidFile != "" && s.reloadCmd != "" {
			return usagef("--pid-file and --reload-command both reload mosquitto: give one")
		}
		if s.wait <= 0 || s.wait > api.MaxBrokerWait {
			return usagef("--poll %s: want more than 0s and at most %s", s.wait, api.MaxBrokerWait)
		}
		m, err := strconv.ParseUint(mode, 8, 32)
		if err != nil || m&^0o777 != 0 {
			return usagef("--file-mode %q: want octal permission bits like 0640", mode)
		}
		s.mode = fs.FileMode(m)
		if s.log, err = a.logger(logLevel, logFormat); err != nil {
			return err
		}
		// A token that cannot be read yet is no reason to stop: broker sync
		// may start before its token exists (the control plane that makes
		// it needs mosquitto, which needs the bootstrap file), so it writes
		// the include file alone and reads the token again on every retry.
		s.newClient = a.client
		if s.c, err = a.client(); err != nil {
			if _, ok := errors.AsType[*usageError](err); ok {
				return err
			}
		}
		if s.pidFile == "" && s.reloadCmd == "" {
			s.log.Warn("no --pid-file or --reload-command: the broker rereads the files only when it is reloaded")
		}
		return s.run(cmd.Context())
	})
	return c
}

// mosquittoSync is one run of broker sync.
type mosquittoSync struct {
	passwdFile, aclFile, include string
	natsFile                     string // --nats-auth-file: NATS instead of mosquitto
	pidFile, reloadCmd           string
	mode                         fs.FileMode
	wait                         time.Duration
	once                         bool
	log                          *slog.Logger

	// c is the API client, nil while the token cannot be read (or after
	// it was refused); newClient makes another, reading the token again.
	c         *client.Client
	newClient func() (*client.Client, error)

	served     *api.MosquittoAuth // the newest answer, nil before the first
	natsServed *api.NATSAuth      // the newest NATS answer (--nats-auth-file)
	warned     map[string]bool    // include logins a served line collided with
	needReload bool               // files were written; mosquitto not yet reloaded
}

// Retry pacing after a failed request.
const (
	syncRetryMin = time.Second
	syncRetryMax = 30 * time.Second
)

func (s *mosquittoSync) run(ctx context.Context) error {
	retry := syncRetryMin
	if s.natsFile != "" {
		return s.runNATS(ctx)
	}
	for {
		have := ""
		if s.served != nil {
			have = s.served.Generation
		}
		auth, changed, err := s.fetch(ctx, have)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			retry = syncRetryMin
			if changed {
				if s.served == nil || s.served.Generation != auth.Generation {
					s.log.Info("broker credentials received", "generation", auth.Generation,
						"devices", auth.Devices, "legacy_devices", auth.LegacyDevices)
				}
				s.served = &auth
			}
			err = s.apply()
		} else {
			err = s.fetchFailed(err)
		}
		if s.once {
			return err
		}
		if err == nil {
			continue
		}
		s.log.Error("broker sync", "err", err, "retry_in", retry)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(retry):
		}
		retry = min(2*retry, syncRetryMax)
	}
}

// runNATS is run for --nats-auth-file: fetch the authorization file,
// write it when it changed, reload the node.
func (s *mosquittoSync) runNATS(ctx context.Context) error {
	retry := syncRetryMin
	for {
		have := ""
		if s.natsServed != nil {
			have = s.natsServed.Generation
		}
		err := s.ensureClient()
		var auth api.NATSAuth
		changed := false
		if err == nil {
			auth, changed, err = s.c.BrokerNATS(ctx, have, s.wait)
			if errors.Is(err, api.ErrUnauthorized) {
				s.c = nil
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			retry = syncRetryMin
			if changed {
				if s.natsServed == nil || s.natsServed.Generation != auth.Generation {
					s.log.Info("NATS logins received", "generation", auth.Generation, "devices", auth.Devices, "excluded", len(auth.Excluded))
					for id, why := range auth.Excluded {
						s.log.Warn("device left out of the NATS logins", "device", id, "reason", why)
					}
				}
				s.natsServed = &auth
			}
			err = s.applyNATS()
		}
		if s.once {
			return err
		}
		if err == nil {
			continue
		}
		s.log.Error("broker sync", "err", err, "retry_in", retry)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(retry):
		}
		retry = min(2*retry, syncRetryMax)
	}
}

// applyNATS writes the authorization file if it changed and reloads the
// node if it did (or an earlier reload failed).
func (s *mosquittoSync) applyNATS() error {
	wrote, err := writeIfChanged(s.natsFile, []byte(s.natsServed.Auth), s.mode)
	if err != nil {
		return err
	}
	if s.needReload = s.needReload || wrote; !s.needReload {
		return nil
	}
	if err := s.reload(); err != nil {
		return fmt.Errorf("NATS logins written, but the node was not reloaded: %w", err)
	}
	s.needReload = false
	s.log.Info("NATS logins written and reloaded", "file", s.natsFile, "devices", s.natsServed.Devices)
	return nil
}

// ensureClient makes an API client if there is none (reading the token
// file again).
func (s *mosquittoSync) ensureClient() error {
	if s.c != nil {
		return nil
	}
	c, err := s.newClient()
	if err != nil {
		return fmt.Errorf("no broker token yet (edgefleet token create --name nats --role broker): %w", err)
	}
	s.c = c
	return nil
}

// fetch asks the control plane for the files, making a client first if
// there is none. A refused token is dropped, so the next try reads the
// token file again (an operator replaced a revoked token).
func (s *mosquittoSync) fetch(ctx context.Context, have string) (api.MosquittoAuth, bool, error) {
	if s.c == nil {
		c, err := s.newClient()
		if err != nil {
			return api.MosquittoAuth{}, false, fmt.Errorf("no broker token yet (edgefleet token create --name mosquitto --role broker): %w", err)
		}
		s.c = c
	}
	auth, changed, err := s.c.BrokerMosquitto(ctx, have, s.wait)
	if errors.Is(err, api.ErrUnauthorized) {
		s.c = nil
	}
	return auth, changed, err
}

// fetchFailed handles a request that failed. Before any answer, a missing
// password file is created from the include file alone: mosquitto does not
// start without it, and the control plane cannot start without mosquitto.
func (s *mosquittoSync) fetchFailed(err error) error {
	if s.served != nil || s.include == "" {
		return err
	}
	if _, serr := os.Stat(s.passwdFile); !errors.Is(serr, fs.ErrNotExist) {
		return err
	}
	if aerr := s.apply(); aerr != nil {
		return errors.Join(err, aerr)
	}
	s.log.Warn("no answer from the control plane yet: wrote the include file's logins alone, so mosquitto and the control plane can start", "file", s.passwdFile)
	return err
}

// apply writes the files that differ from what is on disk and reloads
// mosquitto if any did (or an earlier reload failed). A file that cannot
// be rendered or written stays as it was.
func (s *mosquittoSync) apply() error {
	passwd, err := s.render()
	if err != nil {
		return err
	}
	wrote, err := writeIfChanged(s.passwdFile, passwd, s.mode)
	if err != nil {
		return err
	}
	if s.aclFile != "" && s.served != nil {
		w, err := writeIfChanged(s.aclFile, []byte(s.served.ACL), s.mode)
		if err != nil {
			return err
		}
		wrote = wrote || w
	}
	if s.needReload = s.needReload || wrote; !s.needReload {
		return nil
	}
	if err := s.reload(); err != nil {
		return fmt.Errorf("files written, but mosquitto was not reloaded: %w", err)
	}
	s.needReload = false
	s.log.Info("mosquitto files written and reloaded", "passwd", s.passwdFile, "acl", s.aclFile)
	return nil
}

// render is the password file: a header, the include file's logins, then
// the served ones whose name the include file does not already have.
func (s *mosquittoSync) render() ([]byte, error) {
	var own []mosquitto.Entry
	if s.include != "" {
		b, err := os.ReadFile(s.include)
		if err != nil {
			return nil, fmt.Errorf("include file: %w", err)
		}
		if own, err = mosquitto.ParsePasswd(b); err != nil {
			return nil, fmt.Errorf("include file %s: %w", s.include, err)
		}
	}
	entries := own
	if s.served != nil {
		served, err := mosquitto.ParsePasswd([]byte(s.served.Passwd))
		if err != nil {
			return nil, fmt.Errorf("served password file: %w", err)
		}
		mine := make(map[string]bool, len(own))
		for _, e := range own {
			mine[e.User] = true
		}
		for _, e := range served {
			if mine[e.User] {
				if !s.warned[e.User] {
					s.log.Warn("a login of the include file is also served by the control plane: the include file's line wins", "user", e.User)
					if s.warned == nil {
						s.warned = map[string]bool{}
					}
					s.warned[e.User] = true
				}
				continue
			}
			entries = append(entries, e)
		}
	}
	body, err := mosquitto.WritePasswd(entries)
	if err != nil {
		return nil, err
	}
	header := "# Written by edgefleet broker sync; do not edit: every change is overwritten.\n" +
		"# Add your own logins to the include file (" + s.include + ") with mosquitto_passwd.\n"
	return append([]byte(header), body...), nil
}

// writeIfChanged replaces path with data atomically (a temporary file in
// the same directory, synced, then renamed) unless it already holds data.
func writeIfChanged(path string, data []byte, mode fs.FileMode) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename: no such file
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	return true, nil
}

// reload makes mosquitto reread its password and ACL files.
func (s *mosquittoSync) reload() error {
	switch {
	case s.pidFile != "":
		b, err := os.ReadFile(s.pidFile)
		if err != nil {
			return fmt.Errorf("broker pid file: %w", err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 {
			return fmt.Errorf("broker pid file %s: %q is not a process id", s.pidFile, bytes.TrimSpace(b))
		}
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			return fmt.Errorf("SIGHUP to the broker (pid %d from %s): %w", pid, s.pidFile, err)
		}
	case s.reloadCmd != "":
		out, err := exec.Command("/bin/sh", "-c", s.reloadCmd).CombinedOutput()
		if err != nil {
			return fmt.Errorf("reload command %q: %w: %s", s.reloadCmd, err, bytes.TrimSpace(out))
		}
	}
	return nil
}
