package sim

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"time"
)

// brokerConns counts established TCP connections whose local port is port
// (the server side of broker connections in this process's network
// namespace), from /proc/net/tcp and tcp6; -1 if they cannot be read.
func brokerConns(port int) int {
	n, ok := 0, false
	for _, path := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		ok = true
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[3] != "01" { // 01 = ESTABLISHED
				continue
			}
			_, hexPort, found := strings.Cut(fields[1], ":")
			if !found {
				continue
			}
			p, err := strconv.ParseUint(hexPort, 16, 16)
			if err == nil && int(p) == port {
				n++
			}
		}
		_ = f.Close()
	}
	if !ok {
		return -1
	}
	return n
}

// waitBrokerConns polls brokerConns until it is 0 or timeout passes.
func waitBrokerConns(port int, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		n := brokerConns(port)
		if n <= 0 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond) // polling: the kernel does not notify us
	}
}
