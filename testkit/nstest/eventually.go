package nstest

import (
	"testing"
	"time"
)

// Eventually polls cond until it holds, failing tb with what and cond's last word once timeout
// has passed.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not after %s: %s", what, timeout, why)
		}
		time.Sleep(10 * time.Millisecond) // the polling period
	}
}
