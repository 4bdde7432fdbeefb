package lab

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// The TCP echo server answers each message as it comes, however short (a prefix of WhoRequest
// too), without waiting for more or for the client to close; WhoRequest gets who answered,
// and what follows it in the same write is echoed.
func TestEchoTCPAnswersEachMessageAsItComes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go EchoTCP(ln)
	dial := func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		// A guard against a server that holds the bytes back: the test fails instead of hanging.
		if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, msg := range []string{"a", "ab", "WH", "WHO?", "hello, world\n"} {
		c := dial()
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Errorf("sent %q on an open connection: read %q, %v", msg, got, err)
		}
	}
	c := dial()
	if _, err := io.WriteString(c, WhoRequest+"xyz"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	who, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(who, "127.0.0.1 "+c.LocalAddr().String()) && who != "127.0.0.1 "+c.LocalAddr().String()+"\n" {
		t.Errorf("asked who: %q, %v; want \"127.0.0.1 %s\"", who, err, c.LocalAddr())
	}
	rest := make([]byte, 3)
	if _, err := io.ReadFull(r, rest); err != nil || string(rest) != "xyz" {
		t.Errorf("after the answer: %q, %v; want the rest of the write, \"xyz\"", rest, err)
	}
}
