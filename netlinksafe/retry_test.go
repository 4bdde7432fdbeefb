//go:build linux

package netlinksafe

import (
	"errors"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// dumps is a dump interrupted the first interrupted times, then complete.
func dumps(interrupted int, calls *int) func() ([]string, error) {
	return func() ([]string, error) {
		*calls++
		if *calls <= interrupted {
			return []string{"partial"}, netlink.ErrDumpInterrupted
		}
		return []string{"a", "b"}, nil
	}
}

func TestRetry(t *testing.T) {
	for _, tc := range []struct {
		name        string
		interrupted int
		wantCalls   int
		wantErr     string // "" when the complete dump must come back
	}{
		{"not interrupted", 0, 1, ""},
		{"interrupted twice", 2, 3, ""},
		{"interrupted until the last attempt", maxAttempts - 1, maxAttempts, ""},
		{"always interrupted", maxAttempts, maxAttempts, "netlink dump interrupted 10 times in a row"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			got, err := retry(dumps(tc.interrupted, &calls))
			if calls != tc.wantCalls {
				t.Errorf("%d calls, want %d", calls, tc.wantCalls)
			}
			if tc.wantErr == "" {
				if err != nil || strings.Join(got, ",") != "a,b" {
					t.Errorf("got %v, %v; want [a b], no error", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, netlink.ErrDumpInterrupted) {
				t.Errorf("error %v, want one saying %q and wrapping ErrDumpInterrupted", err, tc.wantErr)
			}
			if got != nil {
				t.Errorf("a partial result came back with the error: %v", got)
			}
		})
	}
}

// Any other error is returned at once, not retried.
func TestRetryOtherError(t *testing.T) {
	calls := 0
	boom := errors.New("boom")
	_, err := retry(func() ([]string, error) { calls++; return nil, boom })
	if calls != 1 || !errors.Is(err, boom) {
		t.Errorf("%d calls, error %v; want 1 call and boom", calls, err)
	}
}

// The wrappers reach the kernel: the loopback device is listed.
func TestLinkListSeesLoopback(t *testing.T) {
	links, err := LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Attrs().Name == "lo" {
			return
		}
	}
	t.Errorf("no lo among %d links", len(links))
}
