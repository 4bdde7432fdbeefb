package agent

import (
	"net/http"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/bgp"
)

// BGPRoute is one learned path as GET /v1/bgp/routes reports it: the path, the verdict
// (installed, standby, refused), why it was refused, the node that owns the prefix and the
// kernel route it became.
type BGPRoute = judgedPath

// errNoBGP answers the BGP endpoints of an agent that routes from its store.
var errNoBGP = &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: "bgp: this agent's routing is store (set routing: bgp to run the BGP speaker)"}

func (a *Agent) bgpRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/bgp/peers", func(w http.ResponseWriter, r *http.Request) {
		if a.bgp == nil {
			reply(w, nil, errNoBGP)
			return
		}
		peers, err := a.bgp.speaker.Peers(r.Context())
		if peers == nil {
			peers = []bgp.PeerStatus{}
		}
		reply(w, peers, err)
	})
	mux.HandleFunc("GET /v1/bgp/routes", func(w http.ResponseWriter, r *http.Request) {
		if a.bgp == nil {
			reply(w, nil, errNoBGP)
			return
		}
		reply(w, a.bgp.routes(), nil)
	})
}
