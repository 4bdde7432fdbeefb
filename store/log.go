package store

import "go.uber.org/zap"

// nopLogger keeps the etcd client quiet; ebpfnet logs with slog what matters.
func nopLogger() *zap.Logger { return zap.NewNop() }
