// Command hostpath-csi is the local cluster's CSI driver: a small controller, identity and
// (stub) node server on a unix socket.
//
// It stands in for csi-driver-host-path (github.com/kubernetes-csi/csi-driver-host-path),
// which the Go module proxy does not serve, and keeps the same on-disk semantics:
//
//   - a volume is the directory <data-dir>/<volume-id>;
//   - a snapshot is a gzip-compressed tar archive of that directory,
//     <data-dir>/snapshots/<snapshot-id>.tar.gz, with its metadata (source volume,
//     creation time, size) in <data-dir>/snapshots/<snapshot-id>.json so that a restart of
//     the driver keeps it;
//   - a volume created from a snapshot is the archive extracted into a new directory, with
//     ownership and modes preserved.
//
// Unlike the upstream driver, which runs GNU tar (it exits non-zero when a file changes
// while it is read), the archive is written with archive/tar: a file that vanishes during
// the walk is skipped and a file that changes is archived as it is read.
//
// Node RPCs other than NodeGetInfo and NodeGetCapabilities are not implemented: the local
// cluster has no kubelet that would call them (its node emulator uses the directory
// directly).
package main

import (
	"context"
	"errors"
	"flag"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
)

func main() {
	endpoint := flag.String("endpoint", "unix:///tmp/hostpath-csi.sock", "gRPC endpoint, unix:///path/to/socket")
	dataDir := flag.String("data-dir", "", "directory holding volumes and snapshots (required)")
	driverName := flag.String("driver-name", "hostpath.csi.snapgroup.dev", "CSI driver name")
	nodeID := flag.String("node-id", "local-node", "node id reported by NodeGetInfo")
	flag.Parse()

	log.SetFlags(log.LstdFlags | log.Lmicroseconds | log.LUTC)
	log.SetPrefix("hostpath-csi: ")

	if *dataDir == "" {
		log.Fatal("--data-dir is required")
	}
	socketPath, err := unixSocketPath(*endpoint)
	if err != nil {
		log.Fatal(err)
	}
	absData, err := filepath.Abs(*dataDir)
	if err != nil {
		log.Fatal(err)
	}
	store, err := openStore(absData)
	if err != nil {
		log.Fatalf("open data dir %s: %v", absData, err)
	}
	drv := &driver{name: *driverName, version: driverVersion, nodeID: *nodeID, store: store}
	if err := drv.resumeUploads(); err != nil {
		log.Fatalf("resume uploads in %s: %v", absData, err)
	}

	// A socket left behind by a killed predecessor would make Listen fail.
	if err := os.Remove(socketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Fatalf("remove stale socket %s: %v", socketPath, err)
	}
	if err := os.MkdirAll(filepath.Dir(socketPath), 0o755); err != nil {
		log.Fatal(err)
	}
	listener, err := net.Listen("unix", socketPath)
	if err != nil {
		log.Fatalf("listen on %s: %v", socketPath, err)
	}

	server := grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	csi.RegisterIdentityServer(server, drv)
	csi.RegisterControllerServer(server, drv)
	csi.RegisterNodeServer(server, drv)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-signals
		log.Printf("received %s, stopping", sig)
		stopped := make(chan struct{})
		go func() {
			server.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			// An in-flight snapshot must not hold up shutdown forever.
			server.Stop()
		}
	}()

	log.Printf("serving %s (stand-in for csi-driver-host-path) on %s, data dir %s",
		drv.name, socketPath, absData)
	if err := server.Serve(listener); err != nil {
		log.Fatalf("serve: %v", err)
	}
	_ = os.Remove(socketPath)
	log.Print("stopped")
}

// unixSocketPath accepts unix:///path (the CSI convention) or a bare path.
func unixSocketPath(endpoint string) (string, error) {
	if !strings.Contains(endpoint, "://") {
		return endpoint, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", err
	}
	if u.Scheme != "unix" {
		return "", errors.New("only unix:// endpoints are supported: " + endpoint)
	}
	return u.Host + u.Path, nil
}

// logCalls logs every RPC with its outcome; the sidecars retry failures, so the log is the
// place to see why.
func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
	if err != nil {
		log.Printf("%s failed after %s: %v", method, time.Since(start).Round(time.Millisecond), err)
	} else if method != "Probe" {
		log.Printf("%s ok in %s", method, time.Since(start).Round(time.Millisecond))
	}
	return resp, err
}
