package deploytest

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// buildPlainAgent builds the agent without the race detector (whose
// shadow memory would swamp what this test measures) next to a copy of
// the onnxruntime library, as an installed agent has it.
func buildPlainAgent(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "edgefleet-agent")
	cmd := exec.Command("go", "build", "-o", bin, "./agent/cmd/edgefleet-agent")
	cmd.Dir = repoRoot(t)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	lib, err := os.ReadFile(hostORT(t))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "libonnxruntime.so.1"), lib, 0o644))
	return bin
}

// rssBytes reads a process's resident set size (VmRSS).
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// largeFraudBody is a valid inference request of about size bytes (3.9 MB: 131 752 rows): rows
// of the fraud model's seven features.
func largeFraudBody(size int) []byte {
	var data bytes.Buffer
	rows := 0
	for data.Len() < size-200 {
		if rows > 0 {
			data.WriteByte(',')
		}
		fmt.Fprintf(&data, "%d.25,13,0.125,%d.5,2,0,%d", 100+rows%900, rows%50, 400+rows%3000)
		rows++
	}
	return []byte(fmt.Sprintf(`{"inputs":[{"name":"features","shape":[%d,7],"datatype":"FP32","data":[%s]}]}`, rows, data.String()))
}

// TestAgentMemoryBoundedUnderParallelLargeRequests: 200 parallel 3.9 MB
// requests keep a real agent process under twice its idle resident size
// with the model loaded: the in-flight byte budget answers the surplus
// with 503 + Retry-After before reading their bodies, a body is read once
// into a buffer of its size, and its shape is checked (here: a batch over
// the limit) before its data is decoded. No request is a 500, and the
// agent serves normally afterwards.
func TestAgentMemoryBoundedUnderParallelLargeRequests(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc")
	}
	cp := startControlPlane(t, nil)
	dir := t.TempDir()
	bin := buildPlainAgent(t, dir)
	cfg := cp.provision("mem-1", filepath.Join(dir, "data"))
	p, addr := startAgentProc(t, nil, bin, "--config", cfg)
	cp.pushAndDeploy("mem-1", "1.0.0")
	cp.waitActive("mem-1", "1.0.0", 2*time.Minute)
	for range 20 {
		inferFraud(t, addr, "1.0.0")
	}
	pid := p.cmd.Process.Pid
	idle := rssBytes(t, pid)

	body := largeFraudBody(3_900_000)
	var mu sync.Mutex // guards peak and statuses
	peak := idle
	statuses := map[int]int{}
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				r := rssBytes(t, pid)
				mu.Lock()
				peak = max(peak, r)
				mu.Unlock()
			}
		}
	}()
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: 200}}
	var wg sync.WaitGroup
	start := time.Now()
	for range 200 {
		wg.Go(func() {
			resp, err := client.Post("http://"+addr+"/v2/models/fraud/infer", "application/json", bytes.NewReader(body))
			code := -1
			if err == nil {
				code = resp.StatusCode
				resp.Body.Close()
			}
			mu.Lock()
			statuses[code]++
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	<-sampled
	inferFraud(t, addr, "1.0.0")

	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	t.Logf("agent RSS idle with model %.1f MiB; peak during 200 parallel %.1f MB requests %.1f MiB (%.2f×); statuses %v in %v",
		mib(idle), float64(len(body))/1e6, mib(peak), float64(peak)/float64(idle), statuses, elapsed.Round(time.Millisecond))
	assert.Less(t, peak, 2*idle, "peak RSS must stay under twice idle")
	for code, n := range statuses {
		assert.Contains(t, []int{http.StatusBadRequest, http.StatusServiceUnavailable}, code, "%d answers of %d", n, code)
	}
	assert.Positive(t, statuses[http.StatusBadRequest], "some requests were read and refused for their batch size")
}
