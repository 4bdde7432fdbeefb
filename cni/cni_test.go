package cni

import (
	"encoding/json"
	"errors"
	"net/netip"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ebpfnet/ebpfnet/agentapi"
)

// ADD's result is given in every supported version, in that version's shape.
func TestResultInEachVersion(t *testing.T) {
	args := &skel.CmdArgs{IfName: "eth0", Netns: "/run/netns/p"}
	res := agentapi.AttachResult{IP: netip.MustParseAddr("10.244.0.2"), Gateway: netip.MustParseAddr("169.254.1.1"),
		MAC: "02:00:00:00:00:02", HostIf: "eb0123456789ab", HostMAC: "02:00:00:00:00:01", MTU: 1450}
	for _, v := range Versions {
		t.Run(v, func(t *testing.T) {
			data := resultIn(t, args, res, v)
			var raw struct {
				CNIVersion string `json:"cniVersion"`
				Interfaces []map[string]any
				IPs        []map[string]any
			}
			if err := json.Unmarshal(data, &raw); err != nil {
				t.Fatal(err)
			}
			if raw.CNIVersion != v || len(raw.Interfaces) != 2 || len(raw.IPs) != 1 {
				t.Fatalf("%s", data)
			}
			_, hasVersion := raw.IPs[0]["version"]
			_, hasMTU := raw.Interfaces[1]["mtu"]
			old, _ := version.GreaterThanOrEqualTo("0.4.0", v)
			if hasVersion != old || hasMTU != (v == "1.1.0") {
				t.Fatalf("ips[].version present %v, interfaces[].mtu present %v in %s", hasVersion, hasMTU, data)
			}
			if old {
				var r types040.Result
				if err := json.Unmarshal(data, &r); err != nil || r.IPs[0].Version != "4" || *r.IPs[0].Interface != 1 {
					t.Fatalf("not a %s result: %s (%v)", v, data, err)
				}
				return
			}
			r, err := types100.NewResult(data)
			if err != nil || r.(*types100.Result).IPs[0].Address.IP.String() != "10.244.0.2" {
				t.Fatalf("not a %s result: %s (%v)", v, data, err)
			}
		})
	}
}

// resultIn is ADD's result for res as version v gives it, in JSON.
func resultIn(t *testing.T, args *skel.CmdArgs, res agentapi.AttachResult, v string) []byte {
	t.Helper()
	conv, err := result(args, res, v).GetAsVersion(v)
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(conv)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// A dual-stack pod's result has its two addresses, each with its family's gateway and default
// route, in every version (0.3.x and 0.4.0 say each address's version).
func TestDualStackResult(t *testing.T) {
	args := &skel.CmdArgs{IfName: "eth0", Netns: "/run/netns/p"}
	res := agentapi.AttachResult{IP: netip.MustParseAddr("10.244.0.2"), Gateway: netip.MustParseAddr("169.254.1.1"),
		IPv6: netip.MustParseAddr("fd00:10:244::2"), GatewayV6: netip.MustParseAddr("fe80::1"),
		MAC: "02:00:00:00:00:02", HostIf: "eb0123456789ab", HostMAC: "02:00:00:00:00:01", MTU: 1450}
	for _, v := range Versions {
		t.Run(v, func(t *testing.T) {
			data := resultIn(t, args, res, v)
			var raw struct {
				IPs []struct {
					Version, Address, Gateway string
				}
				Routes []struct{ Dst, GW string }
			}
			if err := json.Unmarshal(data, &raw); err != nil {
				t.Fatal(err)
			}
			if len(raw.IPs) != 2 || raw.IPs[0].Address != "10.244.0.2/32" || raw.IPs[1].Address != "fd00:10:244::2/128" ||
				raw.IPs[1].Gateway != "fe80::1" || len(raw.Routes) != 2 || raw.Routes[1].Dst != "::/0" || raw.Routes[1].GW != "fe80::1" {
				t.Fatalf("%s", data)
			}
			if old, _ := version.GreaterThanOrEqualTo("0.4.0", v); old && (raw.IPs[0].Version != "4" || raw.IPs[1].Version != "6") {
				t.Fatalf("versions %q %q in %s", raw.IPs[0].Version, raw.IPs[1].Version, data)
			}
		})
	}
}

// Malformed configuration is code 6, an unknown field or no cniVersion code 7.
func TestParseConf(t *testing.T) {
	cases := []struct {
		in   string
		code uint
	}{
		{`{"cniVersion": "1.0.0", "name": `, 6},
		{`{"cniVersion": "1.0.0", "name": "n", "type": "ebpfnet-cni", "mtu": 9000}`, 7},
		{`{"name": "n", "type": "ebpfnet-cni"}`, 7},
	}
	for _, c := range cases {
		_, err := parseConf([]byte(c.in))
		var e *types.Error
		if !errors.As(err, &e) || e.Code != c.code {
			t.Errorf("%s: got %v, want code %d", c.in, err, c.code)
		}
	}
	conf, err := parseConf([]byte(`{"cniVersion": "0.3.1", "name": "n", "type": "ebpfnet-cni"}`))
	if err != nil || conf.Socket != agentapi.DefaultSocket {
		t.Fatalf("got %+v, %v", conf, err)
	}
}
