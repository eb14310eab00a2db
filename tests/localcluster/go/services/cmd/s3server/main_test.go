package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/johannesboyne/gofakes3"
)

const (
	testAccessKey = "bleater"
	testSecretKey = "s3cr3t/with+odd chars"
)

// s3Signer returns the AWS SDK's SigV4 signer, an implementation independent of
// the server's, configured as the SDK's S3 client configures it: S3 signs the
// path as sent, without escaping it a second time. A new one per request: a
// signer caches derived keys by access key, which would hide a wrong secret.
func s3Signer() *v4.Signer {
	return v4.NewSigner(func(o *v4.SignerOptions) { o.DisableURIPathEscaping = true })
}

// s3Client signs requests with s3Signer().
type s3Client struct {
	t         *testing.T
	base      string
	accessKey string
	secretKey string
}

func (c s3Client) do(method, path, body string) (*http.Response, string) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(body))
	payloadHash := hex.EncodeToString(sum[:])
	req.Header.Set("X-Amz-Content-Sha256", payloadHash)
	if c.accessKey != "" {
		creds := aws.Credentials{AccessKeyID: c.accessKey, SecretAccessKey: c.secretKey}
		err = s3Signer().SignHTTP(context.Background(), creds, req, payloadHash, "s3", "us-east-1", time.Now())
		if err != nil {
			c.t.Fatal(err)
		}
	}
	return send(c.t, req)
}

func send(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(data)
}

func startServer(t *testing.T, dataDir string) *httptest.Server {
	t.Helper()
	handler, err := newHandler(dataDir, testAccessKey, testSecretKey, gofakes3.DiscardLog())
	if err != nil {
		t.Fatal(err)
	}
	server := httptest.NewServer(handler)
	t.Cleanup(server.Close)
	return server
}

func expectStatus(t *testing.T, what string, resp *http.Response, body string, status int, code string) {
	t.Helper()
	if resp.StatusCode != status || !strings.Contains(body, code) {
		t.Fatalf("%s: got %d %q, want %d with %s", what, resp.StatusCode, body, status, code)
	}
}

func TestSignedRequestsWorkAndOthersAreRefused(t *testing.T) {
	server := startServer(t, t.TempDir())
	client := s3Client{t: t, base: server.URL, accessKey: testAccessKey, secretKey: testSecretKey}

	resp, body := client.do(http.MethodPut, "/bleater", "")
	expectStatus(t, "create bucket", resp, body, http.StatusOK, "")
	key := "/bleater/events/with%20space%2Bplus%26amp.json"
	resp, body = client.do(http.MethodPut, key, `{"seq":1}`)
	expectStatus(t, "put object", resp, body, http.StatusOK, "")
	resp, body = client.do(http.MethodGet, key, "")
	expectStatus(t, "get object", resp, body, http.StatusOK, `{"seq":1}`)
	resp, body = client.do(http.MethodGet, "/bleater?list-type=2&prefix=events%2F", "")
	expectStatus(t, "list objects", resp, body, http.StatusOK, "<Key>events/with space+plus&amp;amp.json</Key>")

	wrongSecret := client
	wrongSecret.secretKey = "wrong"
	resp, body = wrongSecret.do(http.MethodGet, key, "")
	expectStatus(t, "wrong secret", resp, body, http.StatusForbidden, "SignatureDoesNotMatch")

	wrongKey := client
	wrongKey.accessKey = "someone-else"
	resp, body = wrongKey.do(http.MethodGet, key, "")
	expectStatus(t, "unknown access key", resp, body, http.StatusForbidden, "InvalidAccessKeyId")

	anonymous := client
	anonymous.accessKey = ""
	resp, body = anonymous.do(http.MethodGet, key, "")
	expectStatus(t, "anonymous", resp, body, http.StatusForbidden, "AccessDenied")
}

func TestPresignedGet(t *testing.T) {
	server := startServer(t, t.TempDir())
	client := s3Client{t: t, base: server.URL, accessKey: testAccessKey, secretKey: testSecretKey}
	client.do(http.MethodPut, "/bleater", "")
	client.do(http.MethodPut, "/bleater/a.json", "hello")

	req, err := http.NewRequest(http.MethodGet, server.URL+"/bleater/a.json?X-Amz-Expires=60", nil)
	if err != nil {
		t.Fatal(err)
	}
	creds := aws.Credentials{AccessKeyID: testAccessKey, SecretAccessKey: testSecretKey}
	url, _, err := s3Signer().PresignHTTP(
		context.Background(), creds, req, "UNSIGNED-PAYLOAD", "s3", "us-east-1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	presigned, _ := http.NewRequest(http.MethodGet, url, nil)
	resp, body := send(t, presigned)
	expectStatus(t, "presigned get", resp, body, http.StatusOK, "hello")

	tampered, _ := http.NewRequest(http.MethodGet, strings.Replace(url, "a.json", "b.json", 1), nil)
	resp, body = send(t, tampered)
	expectStatus(t, "tampered presigned get", resp, body, http.StatusForbidden, "SignatureDoesNotMatch")
}

func TestErrorsAreLabelledXMLAndLocationIsAnswered(t *testing.T) {
	server := startServer(t, t.TempDir())
	client := s3Client{t: t, base: server.URL, accessKey: testAccessKey, secretKey: testSecretKey}
	client.do(http.MethodPut, "/bleater", "")

	resp, body := client.do(http.MethodGet, "/bleater/missing.json", "")
	expectStatus(t, "missing key", resp, body, http.StatusNotFound, "NoSuchKey")
	if ct := resp.Header.Get("Content-Type"); ct != "application/xml" {
		t.Fatalf("error Content-Type %q, want application/xml (SDKs refuse anything else)", ct)
	}

	resp, body = client.do(http.MethodGet, "/bleater?location=", "")
	expectStatus(t, "location", resp, body, http.StatusOK, "<LocationConstraint")
	if strings.Contains(body, "ListBucketResult") {
		t.Fatalf("location answered with a listing: %s", body)
	}
	resp, body = client.do(http.MethodGet, "/nothere?location=", "")
	expectStatus(t, "location of a missing bucket", resp, body, http.StatusNotFound, "NoSuchBucket")
}

func TestObjectsSurviveARestartAndACopyOfTheDirectory(t *testing.T) {
	dataDir := t.TempDir()
	first := startServer(t, dataDir)
	client := s3Client{t: t, base: first.URL, accessKey: testAccessKey, secretKey: testSecretKey}
	client.do(http.MethodPut, "/bleater", "")
	client.do(http.MethodPut, "/bleater/events/000000000001.json", `{"seq":1}`)
	first.Close()

	copied := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", dataDir, copied).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	for _, dir := range []string{dataDir, copied} {
		server := startServer(t, dir)
		client.base = server.URL
		resp, body := client.do(http.MethodGet, "/bleater/events/000000000001.json", "")
		expectStatus(t, "get after restart from "+dir, resp, body, http.StatusOK, `{"seq":1}`)
	}
	if _, err := os.Stat(filepath.Join(copied, "buckets", "bleater", "events", "000000000001.json")); err != nil {
		t.Fatalf("object is not a plain file in the data directory: %v", err)
	}
}
