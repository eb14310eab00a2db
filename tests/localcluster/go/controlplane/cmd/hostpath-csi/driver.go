package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"strconv"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	driverVersion = "0.1.0"
	// defaultCapacity is used when a request names no size; directories have no quota, so
	// capacity is bookkeeping only.
	defaultCapacity int64 = 1 << 30
)

// driver implements the CSI identity, controller and node services over a store.
type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	name, version, nodeID string
	store                 *store
}

// --- identity ---

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: d.version}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
			Type: csi.PluginCapability_Service_CONTROLLER_SERVICE,
		}},
	}}}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if _, err := os.Stat(d.store.root); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "data dir: %v", err)
	}
	return &csi.ProbeResponse{}, nil
}

// --- controller ---

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}},
		})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if _, err := d.store.readVolume(req.GetVolumeId()); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %q: %v", req.GetVolumeId(), err)
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeCapabilities: req.GetVolumeCapabilities(),
	}}, nil
}

func checkCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return errors.New("volume capabilities are required")
	}
	for _, c := range caps {
		if c.GetBlock() != nil {
			return errors.New("block volumes are not supported: a volume is a directory")
		}
		if c.GetMount() == nil {
			return errors.New("only mount volumes are supported")
		}
	}
	return nil
}

func requestedCapacity(r *csi.CapacityRange) int64 {
	if r.GetRequiredBytes() > 0 {
		return r.GetRequiredBytes()
	}
	if r.GetLimitBytes() > 0 {
		return r.GetLimitBytes()
	}
	return defaultCapacity
}

func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if req.GetVolumeContentSource().GetVolume() != nil {
		return nil, status.Error(codes.InvalidArgument, "cloning volumes is not supported")
	}
	capacity := requestedCapacity(req.GetCapacityRange())
	sourceSnapshot := req.GetVolumeContentSource().GetSnapshot().GetSnapshotId()
	id := idFor("vol-", req.GetName())
	defer d.store.lock("volume/" + id)()

	if existing, err := d.store.readVolume(id); err == nil {
		// A retry of an earlier request: same answer, unless it asks for something else.
		if existing.Name != req.GetName() || existing.SourceSnapshot != sourceSnapshot ||
			!fits(existing.CapacityBytes, req.GetCapacityRange()) {
			return nil, status.Errorf(codes.AlreadyExists,
				"volume %q exists with different parameters", req.GetName())
		}
		return &csi.CreateVolumeResponse{Volume: volumeMessage(existing)}, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, status.Error(codes.Internal, err.Error())
	}

	staging := d.store.stagingPath(id)
	if err := os.Mkdir(staging, 0o777); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	// mkdir honours the umask; a volume must be writable by any pod user (initdb, for
	// one, runs as an unprivileged user), as with the upstream driver.
	if err := os.Chmod(staging, 0o777); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if sourceSnapshot != "" {
		snap, err := d.store.readSnapshot(sourceSnapshot)
		if errors.Is(err, fs.ErrNotExist) {
			_ = os.RemoveAll(staging)
			return nil, status.Errorf(codes.NotFound, "snapshot %q not found", sourceSnapshot)
		}
		if err != nil {
			_ = os.RemoveAll(staging)
			return nil, status.Error(codes.Internal, err.Error())
		}
		if snap.Uploading {
			_ = os.RemoveAll(staging)
			return nil, status.Errorf(codes.Unavailable, "snapshot %q is not ready to use yet", sourceSnapshot)
		}
		if snap.SizeBytes > capacity {
			_ = os.RemoveAll(staging)
			return nil, status.Errorf(codes.OutOfRange,
				"snapshot %q needs %d bytes, volume asks for %d", sourceSnapshot, snap.SizeBytes, capacity)
		}
		if err := extractArchive(d.store.snapshotArchivePath(sourceSnapshot), staging); err != nil {
			_ = os.RemoveAll(staging)
			return nil, status.Errorf(codes.Internal, "restore snapshot %q: %v", sourceSnapshot, err)
		}
	}
	// The directory appears under its final name only when complete; the metadata file
	// after it marks the request as done.
	if err := os.RemoveAll(d.store.volumeDir(id)); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := os.Rename(staging, d.store.volumeDir(id)); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	rec := &volumeRecord{ID: id, Name: req.GetName(), CapacityBytes: capacity,
		SourceSnapshot: sourceSnapshot, CreatedAt: time.Now().UTC()}
	if err := d.store.writeVolume(rec); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	log.Printf("created volume %s (%s, %d bytes, from snapshot %q)", id, req.GetName(), capacity, sourceSnapshot)
	return &csi.CreateVolumeResponse{Volume: volumeMessage(rec)}, nil
}

func fits(capacity int64, r *csi.CapacityRange) bool {
	if r.GetRequiredBytes() > 0 && capacity < r.GetRequiredBytes() {
		return false
	}
	return r.GetLimitBytes() <= 0 || capacity <= r.GetLimitBytes()
}

func volumeMessage(rec *volumeRecord) *csi.Volume {
	v := &csi.Volume{VolumeId: rec.ID, CapacityBytes: rec.CapacityBytes}
	if rec.SourceSnapshot != "" {
		v.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: rec.SourceSnapshot},
		}}
	}
	return v
}

func (d *driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if !safeID.MatchString(id) || id == snapshotsDirName {
		// Not an id this driver hands out; nothing of it can exist.
		return &csi.DeleteVolumeResponse{}, nil
	}
	defer d.store.lock("volume/" + id)()
	if err := os.RemoveAll(d.store.volumeDir(id)); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := os.Remove(d.store.volumeMetaPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, status.Error(codes.Internal, err.Error())
	}
	log.Printf("deleted volume %s", id)
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *driver) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	source := req.GetSourceVolumeId()
	if source == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume id is required")
	}
	id := idFor("snap-", req.GetName())
	defer d.store.lock("snapshot/" + id)()

	if existing, err := d.store.readSnapshot(id); err == nil {
		if existing.SourceVolumeID != source {
			return nil, status.Errorf(codes.AlreadyExists,
				"snapshot %q exists for volume %q", req.GetName(), existing.SourceVolumeID)
		}
		return &csi.CreateSnapshotResponse{Snapshot: snapshotMessage(existing)}, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, status.Error(codes.Internal, err.Error())
	}

	// Taking the volume's lock keeps a concurrent DeleteVolume from removing it mid-archive.
	unlockVolume := d.store.lock("volume/" + source)
	defer unlockVolume()
	vol, err := d.store.readVolume(source)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "volume %q not found", source)
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}

	// The cut: what the snapshot holds is the volume from this moment on.
	creation := time.Now().UTC()
	staging := d.store.stagingPath(id + ".tar")
	if err := captureVolume(d.store.volumeDir(source), staging); err != nil {
		_ = os.Remove(staging)
		return nil, status.Errorf(codes.Internal, "capture volume %q: %v", source, err)
	}
	if err := os.Rename(staging, d.store.capturedPath(id)); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	captured := time.Since(creation)
	rec := &snapshotRecord{ID: id, Name: req.GetName(), SourceVolumeID: source,
		CreationTime: creation, SizeBytes: vol.CapacityBytes, Uploading: true}
	if err := d.store.writeSnapshot(rec); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	var capturedBytes int64
	if info, err := os.Stat(d.store.capturedPath(id)); err == nil {
		capturedBytes = info.Size()
	}
	log.Printf("cut snapshot %s of volume %s at %s, captured %d bytes in %s; uploading",
		id, source, creation.Format(time.RFC3339Nano), capturedBytes, captured.Round(time.Microsecond))
	go d.upload(id)
	return &csi.CreateSnapshotResponse{Snapshot: snapshotMessage(rec)}, nil
}

// upload compresses a cut snapshot into its archive and marks it ready to use. The sidecar
// sees readiness when it asks again (CreateSnapshot is idempotent, as CSI requires).
func (d *driver) upload(id string) {
	started := time.Now()
	staging := d.store.stagingPath(id + ".tar.gz")
	size, err := compressCapture(d.store.capturedPath(id), staging)
	if err != nil {
		_ = os.Remove(staging)
		log.Printf("upload of snapshot %s failed (retried on the next driver start): %v", id, err)
		return
	}
	defer d.store.lock("snapshot/" + id)()
	rec, err := d.store.readSnapshot(id)
	if err != nil { // deleted while uploading
		_ = os.Remove(staging)
		return
	}
	if err := os.Rename(staging, d.store.snapshotArchivePath(id)); err != nil {
		log.Printf("upload of snapshot %s: %v", id, err)
		return
	}
	rec.Uploading, rec.ArchiveBytes = false, size
	if err := d.store.writeSnapshot(rec); err != nil {
		log.Printf("upload of snapshot %s: %v", id, err)
		return
	}
	_ = os.Remove(d.store.capturedPath(id))
	log.Printf("snapshot %s ready: %d bytes compressed in %s", id, size,
		time.Since(started).Round(time.Millisecond))
}

// resumeUploads restarts the uploads a previous driver process left unfinished.
func (d *driver) resumeUploads() error {
	records, err := d.store.listSnapshots()
	if err != nil {
		return err
	}
	for _, rec := range records {
		if rec.Uploading {
			go d.upload(rec.ID)
		}
	}
	return nil
}

func snapshotMessage(rec *snapshotRecord) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     rec.ID,
		SourceVolumeId: rec.SourceVolumeID,
		CreationTime:   timestamppb.New(rec.CreationTime),
		SizeBytes:      rec.SizeBytes,
		ReadyToUse:     !rec.Uploading,
	}
}

func (d *driver) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	if !safeID.MatchString(id) {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	defer d.store.lock("snapshot/" + id)()
	// Metadata first: without it the snapshot no longer exists for List/Create.
	for _, p := range []string{d.store.snapshotMetaPath(id), d.store.snapshotArchivePath(id),
		d.store.capturedPath(id)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	log.Printf("deleted snapshot %s", id)
	return &csi.DeleteSnapshotResponse{}, nil
}

func (d *driver) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	var records []*snapshotRecord
	if id := req.GetSnapshotId(); id != "" {
		rec, err := d.store.readSnapshot(id)
		if err == nil {
			records = []*snapshotRecord{rec}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, status.Error(codes.Internal, err.Error())
		}
	} else {
		all, err := d.store.listSnapshots()
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		for _, rec := range all {
			if src := req.GetSourceVolumeId(); src == "" || rec.SourceVolumeID == src {
				records = append(records, rec)
			}
		}
	}

	start := 0
	if tok := req.GetStartingToken(); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 || n > len(records) {
			return nil, status.Errorf(codes.Aborted, "invalid starting token %q", tok)
		}
		start = n
	}
	end := len(records)
	if m := int(req.GetMaxEntries()); m > 0 && start+m < end {
		end = start + m
	}
	resp := &csi.ListSnapshotsResponse{}
	for _, rec := range records[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: snapshotMessage(rec)})
	}
	if end < len(records) {
		resp.NextToken = fmt.Sprint(end)
	}
	return resp, nil
}

// --- node (stubs: no kubelet calls them here) ---

func (d *driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.nodeID}, nil
}

func (d *driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}
