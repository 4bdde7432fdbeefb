package lab

import (
	"bufio"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Who is an echo server's answer to WhoRequest: who answered, and whom it saw asking.
type Who struct {
	Server netip.Addr
	Client netip.AddrPort
}

// AskWho connects from the namespace at netnsPath to addr over protocol and asks the echo
// server there who it is and whom it sees.
func AskWho(netnsPath string, addr netip.AddrPort, protocol string) (Who, error) {
	c, err := dialIn(netnsPath, addr, protocol)
	if err != nil {
		return Who{}, err
	}
	defer c.Close()
	var line string
	for try := 0; try < 3; try++ { // UDP: a datagram may be lost
		if err = c.SetDeadline(time.Now().Add(ProbeTimeout / 3)); err != nil {
			return Who{}, err
		}
		if _, err = c.Write([]byte(WhoRequest)); err != nil {
			return Who{}, err
		}
		if line, err = bufio.NewReader(c).ReadString('\n'); err == nil || protocol == "TCP" {
			break
		}
	}
	if err != nil {
		return Who{}, fmt.Errorf("ask %s who: %w", addr, err)
	}
	server, client, ok := strings.Cut(strings.TrimSpace(line), " ")
	w := Who{}
	if w.Server, err = netip.ParseAddr(server); ok && err == nil {
		w.Client, err = netip.ParseAddrPort(client)
	}
	if !ok || err != nil {
		return Who{}, fmt.Errorf("ask %s who: bad answer %q", addr, line)
	}
	return w, nil
}
