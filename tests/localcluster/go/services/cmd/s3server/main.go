// Command s3server is the local cluster's stand-in for the MinIO server.
//
// The MinIO server is AGPL-licensed and is not used by this project; this
// program serves the S3 role instead. It is github.com/johannesboyne/gofakes3
// (MIT) with its s3afero filesystem backend, so every bucket and object lives
// as plain files inside the --data directory:
//
//	DIR/buckets/<bucket>/<object key>    object contents (the file's mtime is LastModified in listings)
//	DIR/metadata/<bucket>/<escaped key>  JSON metadata (user metadata, MD5, Last-Modified header)
//
// Objects therefore survive a restart, and a copy (or tar archive) of DIR
// restores them: paths inside DIR are relative and nothing is kept in memory
// only. The layout differs from MinIO's own on-disk format, which does not
// matter to S3 clients.
//
// Authentication: gofakes3 itself verifies no signatures at all. When an
// access key and secret key are configured (--access-key/--secret-key, or the
// MinIO image's environment MINIO_ROOT_USER/MINIO_ROOT_PASSWORD), this program
// adds its own AWS Signature Version 4 check in front of gofakes3: every
// request must be signed (Authorization header or presigned query) with that
// key pair, otherwise it is rejected with 403 like MinIO would. Limits of that
// check: the signature covers the payload hash the client declares in
// x-amz-content-sha256, but the body is not re-hashed against it, and the
// per-chunk signatures of streaming uploads are not verified (gofakes3 strips
// them). Without credentials every request is accepted.
//
// Usage:
//
//	s3server --listen 127.0.0.1:9000 --data /path/to/volume [--access-key K --secret-key S]
package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3afero"
	"github.com/spf13/afero"
)

func main() {
	if err := run(); err != nil {
		log.Fatalf("s3server: %v", err)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:9000", "host:port to listen on")
	dataDir := flag.String("data", "", "directory that holds every bucket and object (created if missing)")
	accessKey := flag.String("access-key", "", "access key clients must sign with (default $MINIO_ROOT_USER)")
	secretKey := flag.String("secret-key", "", "secret key clients must sign with (default $MINIO_ROOT_PASSWORD)")
	quiet := flag.Bool("quiet", false, "log only errors from the S3 layer")
	flag.Parse()

	if *dataDir == "" {
		return errors.New("--data is required")
	}
	if *accessKey == "" {
		*accessKey = os.Getenv("MINIO_ROOT_USER")
	}
	if *secretKey == "" {
		*secretKey = os.Getenv("MINIO_ROOT_PASSWORD")
	}
	if (*accessKey == "") != (*secretKey == "") {
		return errors.New("set both an access key and a secret key, or neither")
	}

	absData, err := filepath.Abs(*dataDir)
	if err != nil {
		return err
	}
	logLevels := []gofakes3.LogLevel{gofakes3.LogErr, gofakes3.LogWarn}
	if *quiet {
		logLevels = []gofakes3.LogLevel{gofakes3.LogErr}
	}
	handler, err := newHandler(absData, *accessKey, *secretKey, gofakes3.GlobalLog(logLevels...))
	if err != nil {
		return err
	}

	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 30 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = server.Shutdown(shutdownCtx)
	}()

	auth := "no authentication"
	if *accessKey != "" {
		auth = "SigV4 authentication for access key " + *accessKey
	}
	log.Printf("s3server (gofakes3 stand-in for the MinIO server) serving %s on %s, %s",
		absData, listener.Addr(), auth)
	if err := server.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Printf("s3server stopped")
	return nil
}

// newHandler serves the buckets stored in dataDir (created if missing). With
// an accessKey, every request must be signed with accessKey/secretKey.
func newHandler(dataDir, accessKey, secretKey string, logger gofakes3.Logger) (http.Handler, error) {
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	// The backend refuses a bare OsFs (it could RemoveAll outside its root),
	// so root it at the data directory.
	rootFs := afero.NewBasePathFs(afero.NewOsFs(), dataDir)
	backend, err := s3afero.MultiBucket(rootFs)
	if err != nil {
		return nil, fmt.Errorf("opening filesystem backend in %s: %w", dataDir, err)
	}
	bucketsFs := afero.NewBasePathFs(rootFs, "buckets") // where s3afero keeps the objects
	faker := gofakes3.New(pagedBackend{backend, bucketsFs},
		gofakes3.WithLogger(logger),
		// s3afero keeps no object versions.
		gofakes3.WithoutVersioning(),
	)
	var handler http.Handler = faker.Server()
	handler = bucketLocation(backend, handler)
	handler = xmlContentType(handler)
	if accessKey != "" {
		handler = requireSignature(accessKey, secretKey, handler)
	}
	return handler, nil
}

// s3Error is the XML error body S3 servers answer with.
type s3Error struct {
	XMLName   xml.Name `xml:"Error"`
	Code      string   `xml:"Code"`
	Message   string   `xml:"Message"`
	Resource  string   `xml:"Resource"`
	RequestID string   `xml:"RequestId"`
}

func writeS3Error(w http.ResponseWriter, r *http.Request, status int, code, message string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	body, _ := xml.Marshal(s3Error{Code: code, Message: message, Resource: r.URL.Path})
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(body)
}

// bucketLocation answers GetBucketLocation (GET /<bucket>?location), which
// gofakes3 does not route: it would answer with a full object listing. SDKs
// (minio-py among them) ask for it before their first request to a bucket.
func bucketLocation(backend gofakes3.Backend, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := strings.Trim(r.URL.Path, "/")
		if _, ok := r.URL.Query()["location"]; !ok || r.Method != http.MethodGet || path == "" || strings.Contains(path, "/") {
			next.ServeHTTP(w, r)
			return
		}
		exists, err := backend.BucketExists(path)
		if err != nil {
			writeS3Error(w, r, http.StatusInternalServerError, "InternalError", err.Error())
			return
		}
		if !exists {
			writeS3Error(w, r, http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist")
			return
		}
		// An empty LocationConstraint means us-east-1, MinIO's default region.
		w.Header().Set("Content-Type", "application/xml")
		_, _ = w.Write([]byte(xml.Header +
			`<LocationConstraint xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></LocationConstraint>`))
	})
}

// xmlContentType labels XML responses application/xml. gofakes3 sets the
// header only after the status line has gone out, so Go sniffs "text/xml"
// instead, and S3 SDKs (minio-py among them) then refuse to parse error
// bodies such as NoSuchKey.
func xmlContentType(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&xmlLabeller{ResponseWriter: w}, r)
	})
}

type xmlLabeller struct {
	http.ResponseWriter
	wroteHeader bool
}

func (w *xmlLabeller) WriteHeader(status int) {
	if w.wroteHeader {
		return
	}
	w.wroteHeader = true
	if status >= 300 && w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/xml")
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *xmlLabeller) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		if w.Header().Get("Content-Type") == "" && bytes.HasPrefix(b, []byte("<?xml")) {
			w.Header().Set("Content-Type", "application/xml")
		}
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

const sigV4Algorithm = "AWS4-HMAC-SHA256"

// sigV4Request is what a request claims about its signature.
type sigV4Request struct {
	accessKey     string
	scope         string // date/region/service/aws4_request
	date          string // yyyymmdd from the scope
	region        string
	service       string
	signedHeaders []string
	signature     string
	amzDate       string // yyyymmddThhmmssZ
	payloadHash   string
	presigned     bool
}

// requireSignature rejects every request that is not signed with
// accessKey/secretKey (AWS Signature Version 4), as MinIO does.
func requireSignature(accessKey, secretKey string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		claim, err := parseSigV4(r)
		if err != nil {
			writeS3Error(w, r, http.StatusForbidden, "AccessDenied", err.Error())
			return
		}
		if claim.accessKey != accessKey {
			writeS3Error(w, r, http.StatusForbidden, "InvalidAccessKeyId",
				"The Access Key Id you provided does not exist in our records.")
			return
		}
		expected := signV4(secretKey, claim, canonicalRequest(r, claim))
		if !hmac.Equal([]byte(expected), []byte(strings.ToLower(claim.signature))) {
			writeS3Error(w, r, http.StatusForbidden, "SignatureDoesNotMatch",
				"The request signature we calculated does not match the signature you provided.")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func parseSigV4(r *http.Request) (*sigV4Request, error) {
	claim := &sigV4Request{}
	query := r.URL.Query()
	var credential, signedHeaders string

	if auth := r.Header.Get("Authorization"); auth != "" {
		rest, ok := strings.CutPrefix(auth, sigV4Algorithm+" ")
		if !ok {
			return nil, errors.New("only AWS Signature Version 4 is supported")
		}
		for _, field := range strings.Split(rest, ",") {
			key, value, _ := strings.Cut(strings.TrimSpace(field), "=")
			switch key {
			case "Credential":
				credential = value
			case "SignedHeaders":
				signedHeaders = value
			case "Signature":
				claim.signature = value
			}
		}
		claim.amzDate = r.Header.Get("X-Amz-Date")
		claim.payloadHash = r.Header.Get("X-Amz-Content-Sha256")
		if claim.payloadHash == "" {
			return nil, errors.New("missing x-amz-content-sha256 header")
		}
	} else if query.Get("X-Amz-Algorithm") != "" {
		if query.Get("X-Amz-Algorithm") != sigV4Algorithm {
			return nil, errors.New("only AWS Signature Version 4 is supported")
		}
		claim.presigned = true
		credential = query.Get("X-Amz-Credential")
		signedHeaders = query.Get("X-Amz-SignedHeaders")
		claim.signature = query.Get("X-Amz-Signature")
		claim.amzDate = query.Get("X-Amz-Date")
		claim.payloadHash = "UNSIGNED-PAYLOAD"
		if expires, err := strconv.Atoi(query.Get("X-Amz-Expires")); err == nil {
			signedAt, err := time.Parse("20060102T150405Z", claim.amzDate)
			if err == nil && time.Now().After(signedAt.Add(time.Duration(expires)*time.Second)) {
				return nil, errors.New("request has expired")
			}
		}
	} else {
		return nil, errors.New("anonymous access is not allowed")
	}

	if credential == "" || signedHeaders == "" || claim.signature == "" || claim.amzDate == "" {
		return nil, errors.New("incomplete AWS Signature Version 4 credentials")
	}
	parts := strings.Split(credential, "/")
	if len(parts) != 5 || parts[4] != "aws4_request" {
		return nil, fmt.Errorf("malformed credential %q", credential)
	}
	claim.accessKey, claim.date, claim.region, claim.service = parts[0], parts[1], parts[2], parts[3]
	claim.scope = strings.Join(parts[1:], "/")
	claim.signedHeaders = strings.Split(signedHeaders, ";")
	return claim, nil
}

// canonicalRequest builds the SigV4 canonical request for r, as the client
// computed it before signing.
func canonicalRequest(r *http.Request, claim *sigV4Request) string {
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte('\n')
	b.WriteString(uriEncode(r.URL.Path, false))
	b.WriteByte('\n')
	b.WriteString(canonicalQuery(r, claim.presigned))
	b.WriteByte('\n')
	for _, name := range claim.signedHeaders {
		b.WriteString(name)
		b.WriteByte(':')
		b.WriteString(canonicalHeaderValue(r, name))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(strings.Join(claim.signedHeaders, ";"))
	b.WriteByte('\n')
	b.WriteString(claim.payloadHash)
	return b.String()
}

func canonicalQuery(r *http.Request, presigned bool) string {
	var pairs []string
	for key, values := range r.URL.Query() {
		if presigned && key == "X-Amz-Signature" {
			continue
		}
		for _, value := range values {
			pairs = append(pairs, uriEncode(key, true)+"="+uriEncode(value, true))
		}
	}
	// Sorting "k=v" strings orders by key, then value, because '=' sorts
	// before every character uriEncode can produce.
	sort.Strings(pairs)
	return strings.Join(pairs, "&")
}

func canonicalHeaderValue(r *http.Request, name string) string {
	var values []string
	switch name {
	case "host":
		// net/http moves the Host header out of r.Header.
		values = []string{r.Host}
	case "content-length":
		values = r.Header.Values("Content-Length")
		if len(values) == 0 && r.ContentLength >= 0 {
			values = []string{strconv.FormatInt(r.ContentLength, 10)}
		}
	default:
		values = r.Header.Values(name)
	}
	for i, value := range values {
		values[i] = strings.Join(strings.Fields(value), " ")
	}
	return strings.Join(values, ",")
}

// uriEncode encodes s the way SigV4 requires: every byte except the
// unreserved characters is percent-encoded with upper-case hex; '/' is kept
// in paths.
func uriEncode(s string, encodeSlash bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9',
			c == '-', c == '_', c == '.', c == '~':
			b.WriteByte(c)
		case c == '/' && !encodeSlash:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func hmacSHA256(key []byte, data string) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(data))
	return mac.Sum(nil)
}

// signV4 returns the hex signature of canonical under secretKey and the
// claim's scope.
func signV4(secretKey string, claim *sigV4Request, canonical string) string {
	hashed := sha256.Sum256([]byte(canonical))
	stringToSign := strings.Join([]string{
		sigV4Algorithm, claim.amzDate, claim.scope, hex.EncodeToString(hashed[:]),
	}, "\n")
	key := hmacSHA256([]byte("AWS4"+secretKey), claim.date)
	key = hmacSHA256(key, claim.region)
	key = hmacSHA256(key, claim.service)
	key = hmacSHA256(key, "aws4_request")
	return hex.EncodeToString(hmacSHA256(key, stringToSign))
}
