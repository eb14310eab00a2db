package main

import (
	"container/heap"
	"errors"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/johannesboyne/gofakes3"
	"github.com/spf13/afero"
)

// pagedBackend adds what the s3afero backend leaves out: ListObjects pages
// (max-keys, start-after, continuation tokens), in key order, as S3 serves
// them. s3afero answers a paged request with ErrInternalPageNotImplemented,
// which gofakes3 turns into one unbounded listing of every key; a client
// relying on start-after or bounded pages would see all of them.
//
// A page is read by walking the bucket's directory tree in key order, skipping
// subtrees wholly before the start key or outside the prefix, and stopping one
// key past max-keys: a page costs a read of the names on its way and about
// max-keys stats, not the bucket.
// Delimited listings (common prefixes) are left to the backend, unpaged.
type pagedBackend struct {
	gofakes3.Backend
	buckets afero.Fs // rooted at the backend's buckets directory
}

var errPageFull = errors.New("page full")

func (b pagedBackend) ListBucket(bucket string, prefix *gofakes3.Prefix, page gofakes3.ListBucketPage) (*gofakes3.ObjectList, error) {
	if page.IsEmpty() || (prefix != nil && prefix.Delimiter != "") {
		return b.Backend.ListBucket(bucket, prefix, page)
	}
	if err := gofakes3.ValidateBucketName(bucket); err != nil {
		return nil, gofakes3.BucketNotFound(bucket)
	}
	if exists, err := b.Backend.BucketExists(bucket); err != nil {
		return nil, err
	} else if !exists {
		return nil, gofakes3.BucketNotFound(bucket)
	}
	want := ""
	if prefix != nil {
		want = prefix.Prefix
	}
	result := gofakes3.NewObjectList()
	var count int64
	err := b.walk(bucket, "", want, page.Marker, func(key string, info os.FileInfo) error {
		if page.MaxKeys > 0 && count == page.MaxKeys {
			result.IsTruncated = true
			return errPageFull
		}
		obj, err := b.Backend.HeadObject(bucket, key)
		if err != nil {
			return err
		}
		result.Add(&gofakes3.Content{
			Key:          key,
			LastModified: gofakes3.NewContentTime(info.ModTime()),
			ETag:         gofakes3.FormatETag(obj.Hash),
			Size:         info.Size(),
		})
		result.NextMarker = key
		count++
		return nil
	})
	if err != nil && !errors.Is(err, errPageFull) {
		return nil, err
	}
	if !result.IsTruncated {
		result.NextMarker = ""
	}
	return result, nil
}

// walk visits the files under bucket/dir whose keys start with want and sort
// after marker, in key order, where a directory "a" sorts as the keys it
// starts ("a/"), so "a-b" comes before "a/b" as in S3. Only names are read for
// the whole directory; entries are stat-ed when the walk reaches them, so a
// page stops after about max-keys stats however large the directory is.
func (b pagedBackend) walk(bucket, dir, want, marker string, visit func(string, os.FileInfo) error) error {
	f, err := b.buckets.Open(path.Join(bucket, dir))
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	sort.Strings(names)
	var deferred dirHeap // directories wait until their "name/" key comes up
	emit := func(key string, entry os.FileInfo) error {
		if entry.IsDir() {
			// Keys of the subtree all start with key: skip it when they are all
			// before the marker, or none can start with want.
			if (key < marker && !strings.HasPrefix(marker, key)) ||
				!(strings.HasPrefix(key, want) || strings.HasPrefix(want, key)) {
				return nil
			}
			return b.walk(bucket, strings.TrimSuffix(key, "/"), want, marker, visit)
		}
		if key <= marker || !strings.HasPrefix(key, want) {
			return nil
		}
		return visit(key, entry)
	}
	for _, name := range names {
		key := path.Join(dir, name)
		// A file key is key, a directory's key+"/": both sort at or after key+"/"
		// only for directories, so when key+"/" is before the marker (and not a
		// prefix of it) the entry is skipped without a stat.
		if key+"/" < marker && !strings.HasPrefix(marker, key+"/") {
			continue
		}
		if !strings.HasPrefix(key, want) && !strings.HasPrefix(want, key) {
			continue
		}
		for deferred.Len() > 0 && deferred.peek().key < key {
			d := heap.Pop(&deferred).(dirEntry)
			if err := emit(d.key, d.info); err != nil {
				return err
			}
		}
		entry, err := b.buckets.Stat(path.Join(bucket, key))
		if err != nil {
			return err
		}
		if entry.IsDir() {
			heap.Push(&deferred, dirEntry{key + "/", entry})
			continue
		}
		if err := emit(key, entry); err != nil {
			return err
		}
	}
	for deferred.Len() > 0 {
		d := heap.Pop(&deferred).(dirEntry)
		if err := emit(d.key, d.info); err != nil {
			return err
		}
	}
	return nil
}

type dirEntry struct {
	key  string
	info os.FileInfo
}

// dirHeap orders deferred directories by their key.
type dirHeap []dirEntry

func (h dirHeap) Len() int           { return len(h) }
func (h dirHeap) Less(i, j int) bool { return h[i].key < h[j].key }
func (h dirHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dirHeap) Push(x any)        { *h = append(*h, x.(dirEntry)) }
func (h *dirHeap) Pop() any {
	old := *h
	last := old[len(old)-1]
	*h = old[:len(old)-1]
	return last
}
func (h dirHeap) peek() dirEntry { return h[0] }
