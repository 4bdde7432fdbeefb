package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
	"github.com/ebpfnet/ebpfnet/testkit/yamlbomb"
)

// A body up to the limit is read whole; one byte more fails the read with the limit's error,
// with a Content-Length (refused before the handler runs: 413) or without (chunked), and
// also for a handler that itself stops reading at the limit, which would otherwise take a cut
// body for a whole one.
func TestLimitBody(t *testing.T) {
	const limit = 1000
	for _, size := range []int{0, 999, 1000, 1001, 5000} {
		for _, chunked := range []bool{false, true} {
			for _, selfLimited := range []bool{false, true} {
				name := fmt.Sprintf("%d bytes, chunked %v, handler stops at the limit %v", size, chunked, selfLimited)
				var got []byte
				var readErr error
				h := limitBody(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					var body io.Reader = r.Body
					if selfLimited {
						body = io.LimitReader(r.Body, limit)
					}
					got, readErr = io.ReadAll(body)
					reply(w, struct{}{}, readErr)
				}), limit)
				req := httptest.NewRequest("POST", "/v1/policies", bytes.NewReader(bytes.Repeat([]byte("a"), size)))
				if chunked {
					req.ContentLength = -1
				}
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				var ae agentapi.APIError
				_ = json.Unmarshal(rec.Body.Bytes(), &ae) // a body that is no API error leaves ae empty, which the cases below refuse
				switch {
				case size <= limit && (rec.Code != 200 || len(got) != size):
					t.Errorf("%s: %d %s, read %d bytes", name, rec.Code, rec.Body, len(got))
				case size > limit && (rec.Code == 200 || ae.Code != agentapi.CodeInvalidConfig || ae.Message != "request body is over the agent API's limit of 0 MiB"):
					t.Errorf("%s: %d %s; want it refused for its size", name, rec.Code, rec.Body)
				case size > limit && !chunked && rec.Code != http.StatusRequestEntityTooLarge:
					t.Errorf("%s: %d, want 413 from the Content-Length alone", name, rec.Code)
				case len(got) > limit:
					t.Errorf("%s: the handler read %d bytes", name, len(got))
				}
			}
		}
	}
}

// The agent's API refuses a 100 MB policy body and YAML alias bombs having read at most its
// 16 MiB limit (and one read past it) of the body and allocated under 96 MiB in all (which
// bounds its heap's growth: about 35 MiB, twice that under -race, where unguarded it takes
// gigabytes): the body limit and the policy parser's guard answer before the store is touched
// (this agent has none).
func TestAPIRefusesHugeAndHostilePolicies(t *testing.T) {
	api := limitBody((&Agent{}).routes(), agentapi.MaxRequestBytes)
	laughs, long := yamlbomb.LaughsInAnnotations(), yamlbomb.LabelledInAnnotations(64<<10, 4000)
	cases := []struct {
		name   string
		body   func() io.Reader
		length int64 // -1: chunked
		status int
		want   string
	}{
		{"100 MB with its length", func() io.Reader { return nstest.YAMLPadding(100 << 20) }, 100 << 20, 413, "request body is over the agent API's limit of 16 MiB"},
		{"100 MB chunked", func() io.Reader { return nstest.YAMLPadding(100 << 20) }, -1, 400, "request body is over the agent API's limit of 16 MiB"},
		{"billion laughs", func() io.Reader { return strings.NewReader(laughs) }, int64(len(laughs)), 400, "document 1: its aliases expand it past the 1 MiB"},
		{"a long string repeated by aliases", func() io.Reader { return strings.NewReader(long) }, int64(len(long)), 400, "document 1: its aliases expand it past the 1 MiB"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := &countingReader{r: c.body()}
			req := httptest.NewRequest("POST", "/v1/policies", body)
			req.ContentLength = c.length
			rec := httptest.NewRecorder()
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			api.ServeHTTP(rec, req)
			runtime.ReadMemStats(&after)
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d %s, %d bytes read, %.1f MiB allocated", rec.Code, strings.TrimSpace(rec.Body.String()), body.n, float64(alloc)/(1<<20))
			var ae agentapi.APIError
			if err := json.Unmarshal(rec.Body.Bytes(), &ae); err != nil || rec.Code != c.status || ae.Code != agentapi.CodeInvalidConfig || !strings.Contains(ae.Message, c.want) {
				t.Errorf("got %d %s, want %d with code %d and %q", rec.Code, rec.Body, c.status, agentapi.CodeInvalidConfig, c.want)
			}
			if alloc > 96<<20 {
				t.Errorf("allocated %.1f MiB, want under 96 MiB", float64(alloc)/(1<<20))
			}
			if body.n > agentapi.MaxRequestBytes+maxReadSize {
				t.Errorf("read %d bytes of the body, want at most the %d byte limit and one read", body.n, int64(agentapi.MaxRequestBytes))
			}
		})
	}
}

// maxReadSize bounds one Read of a request body (net/http and io.ReadAll ask for less).
const maxReadSize = 1 << 20

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
