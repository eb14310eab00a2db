package main

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var mountCapability = []*csi.VolumeCapability{{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}}

func newDriver(t *testing.T) *driver {
	t.Helper()
	s, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &driver{name: "hostpath.csi.snapgroup.dev", version: "test", nodeID: "n", store: s}
}

func createVolume(t *testing.T, d *driver, name, fromSnapshot string) *csi.Volume {
	t.Helper()
	req := &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: mountCapability,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}}
	if fromSnapshot != "" {
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: fromSnapshot}}}
	}
	resp, err := d.CreateVolume(context.Background(), req)
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.GetVolume()
}

func TestSnapshotRoundTripKeepsContentOwnershipAndModes(t *testing.T) {
	d := newDriver(t)
	vol := createVolume(t, d, "pvc-1", "")
	if again := createVolume(t, d, "pvc-1", ""); again.GetVolumeId() != vol.GetVolumeId() {
		t.Fatalf("retried CreateVolume gave %q, first gave %q", again.GetVolumeId(), vol.GetVolumeId())
	}
	dir := d.store.volumeDir(vol.GetVolumeId())
	pgdata := filepath.Join(dir, "pgdata")
	must(t, os.Mkdir(pgdata, 0o700))
	must(t, os.Chmod(pgdata, 0o700))
	must(t, os.WriteFile(filepath.Join(pgdata, "PG_VERSION"), []byte("15\n"), 0o600))
	must(t, os.Chown(pgdata, 70, 70))
	must(t, os.Chown(filepath.Join(pgdata, "PG_VERSION"), 70, 70))
	must(t, os.Symlink("pgdata/PG_VERSION", filepath.Join(dir, "link")))
	must(t, os.MkdirAll(filepath.Join(dir, "empty", "nested"), 0o755))
	// An object store reports a file's mtime as the object's LastModified: it must survive
	// to the nanosecond, not rounded to a second.
	mtime := time.Date(2026, 11, 27, 12, 0, 0, 987654321, time.UTC)
	must(t, os.WriteFile(filepath.Join(dir, "object"), []byte("x"), 0o644))
	must(t, os.Chtimes(filepath.Join(dir, "object"), mtime, mtime))

	before := time.Now()
	snap, err := d.CreateSnapshot(context.Background(),
		&csi.CreateSnapshotRequest{Name: "snapshot-1", SourceVolumeId: vol.GetVolumeId()})
	if err != nil {
		t.Fatal(err)
	}
	got := snap.GetSnapshot()
	if got.GetSizeBytes() != 1<<20 {
		t.Fatalf("snapshot of the wrong size: %v", got)
	}
	// Cut now, ready once uploaded: the sidecar asks again until it is.
	deadline := time.Now().Add(30 * time.Second)
	for ready := got.GetReadyToUse(); !ready; {
		if time.Now().After(deadline) {
			t.Fatal("snapshot never became ready to use")
		}
		time.Sleep(10 * time.Millisecond)
		polled, err := d.CreateSnapshot(context.Background(),
			&csi.CreateSnapshotRequest{Name: "snapshot-1", SourceVolumeId: vol.GetVolumeId()})
		must(t, err)
		ready = polled.GetSnapshot().GetReadyToUse()
		if !polled.GetSnapshot().GetCreationTime().AsTime().Equal(got.GetCreationTime().AsTime()) {
			t.Fatal("the creation time moved while uploading")
		}
	}
	if ct := got.GetCreationTime().AsTime(); ct.Before(before.Add(-time.Second)) || ct.After(time.Now()) {
		t.Fatalf("creation time %s outside the call", ct)
	}
	// Idempotent by name, with the recorded creation time.
	again, err := d.CreateSnapshot(context.Background(),
		&csi.CreateSnapshotRequest{Name: "snapshot-1", SourceVolumeId: vol.GetVolumeId()})
	if err != nil || !again.GetSnapshot().GetCreationTime().AsTime().Equal(got.GetCreationTime().AsTime()) {
		t.Fatalf("retried CreateSnapshot: %v, %v", again, err)
	}
	// A restarted driver still knows it.
	reopened, err := openStore(d.store.root)
	must(t, err)
	d2 := &driver{name: d.name, store: reopened}
	list, err := d2.ListSnapshots(context.Background(), &csi.ListSnapshotsRequest{SnapshotId: got.GetSnapshotId()})
	if err != nil || len(list.GetEntries()) != 1 {
		t.Fatalf("ListSnapshots after restart: %v, %v", list, err)
	}

	restored := createVolume(t, d2, "pvc-2", got.GetSnapshotId())
	rdir := d2.store.volumeDir(restored.GetVolumeId())
	data, err := os.ReadFile(filepath.Join(rdir, "link"))
	if err != nil || string(data) != "15\n" {
		t.Fatalf("restored content via symlink: %q, %v", data, err)
	}
	info, err := os.Stat(filepath.Join(rdir, "pgdata"))
	must(t, err)
	st := info.Sys().(*syscall.Stat_t)
	if info.Mode().Perm() != 0o700 || st.Uid != 70 || st.Gid != 70 {
		t.Fatalf("restored pgdata: mode %v owner %d:%d", info.Mode(), st.Uid, st.Gid)
	}
	if _, err := os.Stat(filepath.Join(rdir, "empty", "nested")); err != nil {
		t.Fatalf("empty directories are part of the volume: %v", err)
	}
	object, err := os.Stat(filepath.Join(rdir, "object"))
	must(t, err)
	if !object.ModTime().Equal(mtime) {
		t.Fatalf("restored mtime %s, want %s", object.ModTime().UTC(), mtime)
	}

	_, err = d2.CreateSnapshot(context.Background(),
		&csi.CreateSnapshotRequest{Name: "snapshot-1", SourceVolumeId: restored.GetVolumeId()})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("same snapshot name for another volume: got %v, want AlreadyExists", err)
	}

	_, err = d2.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: got.GetSnapshotId()})
	must(t, err)
	if _, err := os.Stat(d2.store.snapshotArchivePath(got.GetSnapshotId())); !os.IsNotExist(err) {
		t.Fatalf("archive still there after DeleteSnapshot: %v", err)
	}
	_, err = d2.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()})
	must(t, err)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("volume dir still there after DeleteVolume: %v", err)
	}
}

func TestArchiveOfChangingDirectory(t *testing.T) {
	src := t.TempDir()
	for i := range 200 {
		must(t, os.WriteFile(filepath.Join(src, "f"+string(rune('a'+i%26))+time.Now().Format("150405.000000000")), make([]byte, 4096), 0o644))
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // a writer that keeps creating, growing, truncating and removing files
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			entries, _ := os.ReadDir(src)
			for j, e := range entries {
				p := filepath.Join(src, e.Name())
				switch (i + j) % 3 {
				case 0:
					_ = os.Remove(p)
				case 1:
					_ = os.Truncate(p, 10)
				default:
					_ = os.WriteFile(p, make([]byte, 8192), 0o644)
				}
			}
			_ = os.WriteFile(filepath.Join(src, "new"), []byte("x"), 0o644)
		}
	}()
	for i := range 20 {
		captured := filepath.Join(t.TempDir(), "a.tar")
		if err := captureVolume(src, captured); err != nil {
			close(stop)
			t.Fatalf("capture %d of a changing directory failed: %v", i, err)
		}
		dst := filepath.Join(t.TempDir(), "a.tar.gz")
		if _, err := compressCapture(captured, dst); err != nil {
			close(stop)
			t.Fatalf("compressing capture %d failed: %v", i, err)
		}
		out := t.TempDir()
		if err := extractArchive(dst, out); err != nil {
			close(stop)
			t.Fatalf("archive %d does not extract: %v", i, err)
		}
	}
	close(stop)
	<-done
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
