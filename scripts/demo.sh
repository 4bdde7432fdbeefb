#!/usr/bin/env bash
# `make demo`: a two-node lab in network namespaces, its reachability matrix, and where to look.
set -euo pipefail
bin=${EBPFNET:-bin/ebpfnet}
name=${LAB:-demo}

"$bin" lab down --name "$name" >/dev/null
"$bin" lab up -f examples/demo-lab.yaml --name "$name"
echo
echo "== who reaches whom on TCP/80 (every pod runs an echo server on its declared ports)"
"$bin" lab matrix --name "$name" --port 80 --protocol TCP
echo
echo "== one probe, as a script would use it (exit 0 = reachable)"
"$bin" lab probe shop/frontend db/redis --name "$name" --port 80 --protocol TCP
echo
echo "== a Service, load-balanced in BPF (no kube-proxy): by ClusterIP from a pod, by NodePort from outside the cluster"
"$bin" service list --lab "$name"
"$bin" lab probe shop/frontend svc/shop/cart --name "$name" --port 8080 --protocol TCP
"$bin" lab probe underlay node/node1 --name "$name" --port 30080 --protocol TCP
echo
echo "== a NetworkPolicy: only shop/frontend may reach the db namespace (returns once every node enforces it)"
"$bin" policy apply -f examples/deny-shop-to-db.yaml --lab "$name"
"$bin" lab matrix --name "$name" --port 80 --protocol TCP
echo
pin=$("$bin" lab nodes --name "$name" -o json | sed -n 's/.*"pinDir": "\(.*node1\)".*/\1/p')
echo "== node1's datapath counters (BPF per-CPU map, read by ebpfnet metrics)"
"$bin" --pin-dir "$pin" metrics
echo
echo "== node1's endpoints map"
"$bin" --pin-dir "$pin" endpoint list
cat <<MSG

Look inside:
  $bin lab pods --name $name                       # pods, their IPs and netns
  $bin policy list --lab $name                     # policies and the pods they select
  $bin lab label pod shop/cart app=frontend --name $name   # relabel: watch the matrix change
  $bin --pin-dir $pin metrics                      # counters by reason and direction
  $bin --pin-dir $pin nat list                     # Service and masquerade translations
  bpftool map dump pinned $pin/endpoints           # the raw map, with BTF field names
  $bin --pin-dir $pin datapath status             # which programs sit on which interfaces
  ip netns exec $name-node1 tcpdump -ni eth0 udp port 8472    # VXLAN on the underlay
Why is a packet dropped?
  $bin monitor                                     # in another terminal: drops, pods named
  $bin lab probe shop/cart db/redis --name $name --port 80
  $bin policy explain shop/cart db/redis --port 80 --protocol TCP
Tear down:
  $bin lab down --name $name
MSG
