// Package bpf holds ebpfnet's datapath: the C programs and the Go bindings bpf2go generates.
package bpf

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target bpfel -go-package bpf -type endpoint_key -type endpoint_info -type metrics_key -type metrics_value -type lpm_key -type route_info -type node_config -type tunnel_mode -type route_flags -type ipcache_info -type policy_key -type policy_value -type ct_key -type ct_entry -type identity_reserved -type policy_direction -type endpoint_flags -type ct_flags -type event -type reason -type direction Datapath datapath.c -- -I./include -I/usr/include/x86_64-linux-gnu -Wall -Werror
