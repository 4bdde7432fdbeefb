package agent

import (
	"strings"
	"testing"
	"time"
)

func TestLoopStuck(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name    string
		ago     time.Duration
		storeUp bool
		stuck   bool
	}{
		{"came round just now", 0, true, false},
		{"between two polls", 3 * time.Second, true, false},
		{"a long pass, under the bound", 2*time.Minute - time.Second, true, false},
		{"hung past the bound", 2*time.Minute + time.Second, true, true},
		{"hung, waiting on a store that does not answer", 10 * time.Minute, false, false},
	} {
		got := loopStuck(now.Add(-c.ago), now, c.storeUp)
		if (got != "") != c.stuck {
			t.Errorf("%s: %q; want stuck %v", c.name, got, c.stuck)
		}
		if c.stuck && !strings.Contains(got, "2m1s") {
			t.Errorf("%s: %q does not say how long", c.name, got)
		}
	}
}
