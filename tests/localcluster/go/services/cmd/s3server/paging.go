package main

import (
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
// key past max-keys, so a page costs about max-keys files, not the bucket.
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
// after marker, in key order: a directory's entries sorted as the keys they
// start (a directory "a" as "a/"), so "a-b" comes before "a/b" as in S3.
func (b pagedBackend) walk(bucket, dir, want, marker string, visit func(string, os.FileInfo) error) error {
	entries, err := afero.ReadDir(b.buckets, path.Join(bucket, dir))
	if err != nil {
		return err
	}
	sortKey := func(e os.FileInfo) string {
		key := path.Join(dir, e.Name())
		if e.IsDir() {
			key += "/"
		}
		return key
	}
	sort.Slice(entries, func(i, j int) bool { return sortKey(entries[i]) < sortKey(entries[j]) })
	for _, entry := range entries {
		key := sortKey(entry)
		if entry.IsDir() {
			// Keys of the subtree all start with key: skip it when they are all
			// before the marker, or none can start with want.
			if (key < marker && !strings.HasPrefix(marker, key)) ||
				!(strings.HasPrefix(key, want) || strings.HasPrefix(want, key)) {
				continue
			}
			if err := b.walk(bucket, strings.TrimSuffix(key, "/"), want, marker, visit); err != nil {
				return err
			}
			continue
		}
		if key <= marker || !strings.HasPrefix(key, want) {
			continue
		}
		if err := visit(key, entry); err != nil {
			return err
		}
	}
	return nil
}
