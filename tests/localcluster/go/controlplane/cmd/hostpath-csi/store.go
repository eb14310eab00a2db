package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// snapshotsDirName and volumeMetaDirName are reserved names inside the data dir; no volume id
// may take them.
const (
	snapshotsDirName  = "snapshots"
	volumeMetaDirName = ".volumes"
	stagingDirName    = ".staging"
)

// volumeRecord is what the driver remembers about a volume besides its directory.
type volumeRecord struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	CapacityBytes  int64     `json:"capacityBytes"`
	SourceSnapshot string    `json:"sourceSnapshot,omitempty"`
	CreatedAt      time.Time `json:"createdAt"`
}

// snapshotRecord is the metadata kept next to a snapshot archive.
type snapshotRecord struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	SourceVolumeID string    `json:"sourceVolumeId"`
	CreationTime   time.Time `json:"creationTime"`
	// SizeBytes is the restore size: the source volume's capacity, as the upstream driver
	// reports it. ArchiveBytes is the size of the archive on disk.
	SizeBytes    int64 `json:"sizeBytes"`
	ArchiveBytes int64 `json:"archiveBytes"`
	// Uploading is true from the cut until the compressed archive is in place: the snapshot
	// exists (it has its creation time) but is not ready to use yet.
	Uploading bool `json:"uploading,omitempty"`
}

// store is the data dir: volume directories, their metadata, and snapshot archives.
type store struct {
	root  string
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

func openStore(root string) (*store, error) {
	for _, dir := range []string{root, filepath.Join(root, snapshotsDirName),
		filepath.Join(root, volumeMetaDirName), filepath.Join(root, stagingDirName)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	}
	// Leftovers of a restore or snapshot interrupted by a crash; the sidecar retries them.
	staging := filepath.Join(root, stagingDirName)
	if entries, err := os.ReadDir(staging); err == nil {
		for _, e := range entries {
			_ = os.RemoveAll(filepath.Join(staging, e.Name()))
		}
	}
	return &store{root: root, locks: map[string]*sync.Mutex{}}, nil
}

// lock serialises operations on one volume or snapshot name; different names run in
// parallel so that a group of snapshots is cut concurrently.
func (s *store) lock(key string) func() {
	s.mu.Lock()
	m, ok := s.locks[key]
	if !ok {
		m = &sync.Mutex{}
		s.locks[key] = m
	}
	s.mu.Unlock()
	m.Lock()
	return m.Unlock
}

var safeID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// idFor derives a stable id from a request name, so a retried request finds its earlier
// result even across driver restarts. Names the sidecars send (pvc-<uid>, snapshot-<uid>)
// are used as they are, which keeps the data dir readable.
func idFor(prefix, name string) string {
	if safeID.MatchString(name) && name != snapshotsDirName && !strings.HasPrefix(name, ".") {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return prefix + hex.EncodeToString(sum[:16])
}

func (s *store) volumeDir(id string) string { return filepath.Join(s.root, id) }

func (s *store) volumeMetaPath(id string) string {
	return filepath.Join(s.root, volumeMetaDirName, id+".json")
}

func (s *store) snapshotArchivePath(id string) string {
	return filepath.Join(s.root, snapshotsDirName, id+".tar.gz")
}

// capturedPath holds the uncompressed tar written at the cut, until the upload replaces it.
func (s *store) capturedPath(id string) string {
	return filepath.Join(s.root, snapshotsDirName, id+".tar")
}

func (s *store) snapshotMetaPath(id string) string {
	return filepath.Join(s.root, snapshotsDirName, id+".json")
}

// stagingPath is a fresh path on the same filesystem as the data dir, for write-then-rename.
func (s *store) stagingPath(name string) string {
	return filepath.Join(s.root, stagingDirName, fmt.Sprintf("%s-%d", name, time.Now().UnixNano()))
}

func (s *store) readVolume(id string) (*volumeRecord, error) {
	if !safeID.MatchString(id) {
		return nil, fs.ErrNotExist // not an id this driver hands out
	}
	var rec volumeRecord
	if err := readJSON(s.volumeMetaPath(id), &rec); err != nil {
		return nil, err
	}
	return &rec, nil
}

func (s *store) writeVolume(rec *volumeRecord) error {
	return s.writeJSON(s.volumeMetaPath(rec.ID), rec)
}

func (s *store) readSnapshot(id string) (*snapshotRecord, error) {
	if !safeID.MatchString(id) {
		return nil, fs.ErrNotExist
	}
	var rec snapshotRecord
	if err := readJSON(s.snapshotMetaPath(id), &rec); err != nil {
		return nil, err
	}
	return &rec, nil
}

func (s *store) writeSnapshot(rec *snapshotRecord) error {
	return s.writeJSON(s.snapshotMetaPath(rec.ID), rec)
}

// listSnapshots returns every complete snapshot (one whose metadata file exists), by id.
func (s *store) listSnapshots() ([]*snapshotRecord, error) {
	entries, err := os.ReadDir(filepath.Join(s.root, snapshotsDirName))
	if err != nil {
		return nil, err
	}
	var out []*snapshotRecord
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		rec, err := s.readSnapshot(id)
		if errors.Is(err, os.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func readJSON(path string, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// writeJSON replaces path atomically, so a crash never leaves half a record that would
// make a later request fail.
func (s *store) writeJSON(path string, value any) error {
	data, err := json.MarshalIndent(value, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.stagingPath(filepath.Base(path))
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
