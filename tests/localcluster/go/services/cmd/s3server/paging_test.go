package main

import (
	"encoding/xml"
	"net/http"
	"reflect"
	"testing"
)

type listing struct {
	Keys      []string `xml:"Contents>Key"`
	Truncated bool     `xml:"IsTruncated"`
	Next      string   `xml:"NextContinuationToken"`
}

func list(t *testing.T, client s3Client, query string) listing {
	t.Helper()
	resp, body := client.do(http.MethodGet, "/bleater?list-type=2"+query, "")
	expectStatus(t, "list "+query, resp, body, http.StatusOK, "")
	var got listing
	if err := xml.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("list %s: %v in %s", query, err, body)
	}
	return got
}

func TestListingsArePagedInKeyOrderFromTheStartKey(t *testing.T) {
	server := startServer(t, t.TempDir())
	client := s3Client{t: t, base: server.URL, accessKey: testAccessKey, secretKey: testSecretKey}
	client.do(http.MethodPut, "/bleater", "")
	// "a-b" sorts before "a/b" as keys, though the directory "a" comes first on disk.
	for _, key := range []string{"a/c", "b", "a-b", "a/b", "c/d/e", "other/x"} {
		client.do(http.MethodPut, "/bleater/"+key, "{}")
	}

	first := list(t, client, "&max-keys=2")
	if want := []string{"a-b", "a/b"}; !reflect.DeepEqual(first.Keys, want) || !first.Truncated {
		t.Fatalf("first page: %+v, want %v and truncated", first, want)
	}
	second := list(t, client, "&max-keys=2&continuation-token="+first.Next)
	if want := []string{"a/c", "b"}; !reflect.DeepEqual(second.Keys, want) {
		t.Fatalf("second page: %+v, want %v", second, want)
	}
	after := list(t, client, "&start-after=b&max-keys=10")
	if want := []string{"c/d/e", "other/x"}; !reflect.DeepEqual(after.Keys, want) || after.Truncated {
		t.Fatalf("after b: %+v, want %v, complete", after, want)
	}
	prefixed := list(t, client, "&prefix=a/&start-after=a/b")
	if want := []string{"a/c"}; !reflect.DeepEqual(prefixed.Keys, want) {
		t.Fatalf("prefix a/ after a/b: %+v, want %v", prefixed, want)
	}
}
