package main

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// captureVolume writes an uncompressed tar of srcDir to dstPath: the cut, kept as short as
// reading the files allows because it happens inside the application's freeze window. The
// directory may be in use (a database writing to it): a file or directory that disappears
// during the walk is skipped, and a file is archived with the bytes it has when it is read
// (padded with zeros if it shrank after its header was written, since tar needs the
// announced size).
func captureVolume(srcDir, dstPath string) error {
	out, err := os.OpenFile(dstPath, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	buffered := bufio.NewWriterSize(out, 1<<20)
	tw := tar.NewWriter(buffered)

	walkErr := filepath.WalkDir(srcDir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p != srcDir {
				return nil // vanished while walking
			}
			return err
		}
		rel, err := filepath.Rel(srcDir, p)
		if err != nil {
			return err
		}
		name := "."
		if rel != "." {
			name = "./" + filepath.ToSlash(rel)
		}
		return addEntry(tw, p, name)
	})
	if walkErr != nil {
		return walkErr
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := buffered.Flush(); err != nil {
		return err
	}
	return out.Close()
}

// compressCapture gzips a captured tar into dstPath and returns the archive's size: the
// driver's "upload", which runs after the cut, outside the freeze window, as a cloud
// driver's upload to its object store does.
func compressCapture(srcPath, dstPath string) (int64, error) {
	in, err := os.Open(srcPath)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dstPath, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	buffered := bufio.NewWriterSize(out, 1<<20)
	gz, err := gzip.NewWriterLevel(buffered, gzip.DefaultCompression)
	if err != nil {
		return 0, err
	}
	if _, err := io.Copy(gz, bufio.NewReaderSize(in, 1<<20)); err != nil {
		return 0, err
	}
	if err := gz.Close(); err != nil {
		return 0, err
	}
	if err := buffered.Flush(); err != nil {
		return 0, err
	}
	if err := out.Sync(); err != nil {
		return 0, err
	}
	info, err := out.Stat()
	if err != nil {
		return 0, err
	}
	return info.Size(), out.Close()
}

// addEntry archives one path under name; a path that no longer exists is skipped.
func addEntry(tw *tar.Writer, p, name string) error {
	info, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	switch mode := info.Mode(); {
	case mode.IsDir():
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = strings.TrimSuffix(name, "/") + "/"
		return writeHeader(tw, hdr)
	case mode&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, target)
		if err != nil {
			return err
		}
		hdr.Name = name
		return writeHeader(tw, hdr)
	case mode.IsRegular():
		return addFile(tw, p, name)
	default:
		// Sockets, pipes and devices hold no data worth restoring (a PostgreSQL socket
		// would even be in the way of the restored server).
		log.Printf("snapshot: skipping %s (%s)", p, mode.Type())
		return nil
	}
}

// writeHeader writes hdr in PAX format, which keeps sub-second modification times: with the
// default format they are rounded to the nearest second, and a restored object store would then
// report objects as modified up to half a second later than they were.
func writeHeader(tw *tar.Writer, hdr *tar.Header) error {
	hdr.Format = tar.FormatPAX
	return tw.WriteHeader(hdr)
}

func addFile(tw *tar.Writer, p, name string) error {
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	// Stat the open file, so the header describes what is about to be read.
	info, err := f.Stat()
	if err != nil {
		return err
	}
	hdr, err := tar.FileInfoHeader(info, "")
	if err != nil {
		return err
	}
	hdr.Name = name
	if err := writeHeader(tw, hdr); err != nil {
		return err
	}
	n, err := io.CopyN(tw, f, hdr.Size)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if n < hdr.Size {
		// Truncated while being read: keep the archive well-formed.
		if _, err := io.CopyN(tw, zeroReader{}, hdr.Size-n); err != nil {
			return err
		}
	}
	return nil
}

type zeroReader struct{}

func (zeroReader) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// extractArchive unpacks archivePath into dstDir (which must exist), restoring ownership,
// modes and modification times; the archive's root entry applies to dstDir itself.
func extractArchive(archivePath, dstDir string) error {
	in, err := os.Open(archivePath)
	if err != nil {
		return err
	}
	defer in.Close()
	gz, err := gzip.NewReader(bufio.NewReaderSize(in, 1<<20))
	if err != nil {
		return err
	}
	defer gz.Close()
	tr := tar.NewReader(gz)

	type dirAttrs struct {
		path string
		hdr  *tar.Header
	}
	var dirs []dirAttrs
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		rel := path.Clean(strings.TrimPrefix(hdr.Name, "/"))
		if rel == ".." || strings.HasPrefix(rel, "../") {
			return fmt.Errorf("archive entry %q escapes the volume", hdr.Name)
		}
		target := filepath.Join(dstDir, filepath.FromSlash(rel))
		if rel != "." {
			if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
				return err
			}
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o700); err != nil {
				return err
			}
			// Attributes are applied last: a read-only directory must still take its
			// children, and creating them would change its mtime.
			dirs = append(dirs, dirAttrs{target, hdr})
		case tar.TypeReg:
			if err := extractFile(tr, target, hdr); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
			if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
				return err
			}
		case tar.TypeLink:
			linked := filepath.Join(dstDir, filepath.FromSlash(path.Clean(hdr.Linkname)))
			if err := os.Link(linked, target); err != nil {
				return err
			}
		default:
			log.Printf("restore: skipping %s (type %q)", hdr.Name, hdr.Typeflag)
		}
	}
	slices.Reverse(dirs) // children before parents, so parents' mtimes stay put
	for _, d := range dirs {
		if err := applyAttrs(d.path, d.hdr); err != nil {
			return err
		}
	}
	return nil
}

func extractFile(r io.Reader, target string, hdr *tar.Header) error {
	f, err := os.OpenFile(target, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return applyAttrs(target, hdr)
}

// applyAttrs sets owner, then mode (chown clears set-id bits), then times.
func applyAttrs(target string, hdr *tar.Header) error {
	if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
		return err
	}
	if err := os.Chmod(target, hdr.FileInfo().Mode()); err != nil {
		return err
	}
	mtime := hdr.ModTime
	if mtime.IsZero() {
		mtime = time.Now()
	}
	return os.Chtimes(target, mtime, mtime)
}
