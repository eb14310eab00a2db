package main

import (
	"sort"

	"github.com/johannesboyne/gofakes3"
)

// pagedBackend adds what the s3afero backend leaves out: ListObjects pages
// (max-keys, start-after, continuation tokens) as S3 serves them, in key
// order. The filesystem backend answers a paged request with
// ErrInternalPageNotImplemented, which gofakes3 turns into one unbounded
// listing; clients that rely on start-after or bounded pages would then see
// every key. The underlying listing still walks the whole prefix for each
// page (the stand-in has no index), so only the answer is bounded here.
type pagedBackend struct {
	gofakes3.Backend
}

func (b pagedBackend) ListBucket(bucket string, prefix *gofakes3.Prefix, page gofakes3.ListBucketPage) (*gofakes3.ObjectList, error) {
	all, err := b.Backend.ListBucket(bucket, prefix, gofakes3.ListBucketPage{})
	if err != nil || page.IsEmpty() || len(all.CommonPrefixes) > 0 {
		// Delimited listings (common prefixes) are left whole, as before.
		return all, err
	}
	contents := all.Contents
	sort.Slice(contents, func(i, j int) bool { return contents[i].Key < contents[j].Key })
	if page.HasMarker {
		first := sort.Search(len(contents), func(i int) bool { return contents[i].Key > page.Marker })
		contents = contents[first:]
	}
	result := gofakes3.NewObjectList()
	if page.MaxKeys > 0 && int64(len(contents)) > page.MaxKeys {
		contents = contents[:page.MaxKeys]
		result.IsTruncated = true
		result.NextMarker = contents[len(contents)-1].Key
	}
	result.Contents = contents
	return result, nil
}
