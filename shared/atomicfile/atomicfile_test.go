package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// leftovers lists the directory entries other than the wanted names.
func leftovers(t *testing.T, dir string, want ...string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var extra []string
	for _, e := range ents {
		found := false
		for _, w := range want {
			found = found || e.Name() == w
		}
		if !found {
			extra = append(extra, e.Name())
		}
	}
	return extra
}

func TestWriteContentAndMode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		existing []byte // nil: no file before
		oldMode  os.FileMode
		o        Options
		wantMode os.FileMode
	}{
		{name: "new private", o: Options{Perm: 0o600}, wantMode: 0o600},
		{name: "new readable", o: Options{Perm: 0o644}, wantMode: 0o644},
		{name: "umask does not apply", o: Options{Perm: 0o777}, wantMode: 0o777},
		{name: "replace narrows mode", existing: []byte("old"), oldMode: 0o644, o: Options{Perm: 0o600}, wantMode: 0o600},
		{name: "replace widens mode", existing: []byte("old"), oldMode: 0o600, o: Options{Perm: 0o640}, wantMode: 0o640},
		{name: "setuid kept", o: Options{Perm: 0o755 | os.ModeSetuid}, wantMode: 0o755 | os.ModeSetuid},
		{name: "setuid kept after chown", o: Options{Perm: 0o750 | os.ModeSetgid, Chown: true, UID: os.Getuid(), GID: os.Getgid()}, wantMode: 0o750 | os.ModeSetgid},
		{name: "no replace, new file", o: Options{Perm: 0o600, NoReplace: true}, wantMode: 0o600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "f.conf")
			if tc.existing != nil {
				if err := os.WriteFile(path, tc.existing, tc.oldMode); err != nil {
					t.Fatal(err)
				}
			}
			data := []byte("new content\n")
			if err := Write(path, data, tc.o); err != nil {
				t.Fatalf("Write: %v", err)
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("content = %q, %v; want %q", got, err, data)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != tc.wantMode {
				t.Errorf("mode = %v, want %v", fi.Mode(), tc.wantMode)
			}
			if extra := leftovers(t, dir, "f.conf"); len(extra) > 0 {
				t.Errorf("left behind: %v", extra)
			}
		})
	}
}

func TestWriteFileIsWrite(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "token")
	if err := WriteFile(path, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode() != 0o600 || fi.Size() != 6 {
		t.Fatalf("stat = %v, %v; want 6 bytes, mode 0600", fi, err)
	}
}

func TestWriteErrorLeavesNothing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T, path string) // what is at path before
		o       Options
		wantIs  error
		wantOld []byte // content at path that must survive
	}{
		{
			name:    "no replace over existing file",
			setup:   func(t *testing.T, path string) { mustWrite(t, path, "keep me") },
			o:       Options{Perm: 0o600, NoReplace: true},
			wantIs:  os.ErrExist,
			wantOld: []byte("keep me"),
		},
		{
			name: "path is a directory",
			setup: func(t *testing.T, path string) {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
				mustWrite(t, filepath.Join(path, "inside"), "x")
			},
			o: Options{Perm: 0o600},
		},
		{
			name: "no replace over a directory",
			setup: func(t *testing.T, path string) {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
			},
			o:      Options{Perm: 0o600, NoReplace: true},
			wantIs: os.ErrExist,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			tc.setup(t, path)
			err := Write(path, []byte("new"), tc.o)
			if err == nil {
				t.Fatal("Write succeeded, want an error")
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("err = %v, want one matching %v", err, tc.wantIs)
			}
			if tc.wantOld != nil {
				if got, _ := os.ReadFile(path); !bytes.Equal(got, tc.wantOld) {
					t.Errorf("content = %q, want %q untouched", got, tc.wantOld)
				}
			}
			if extra := leftovers(t, dir, "f"); len(extra) > 0 {
				t.Errorf("left behind after error: %v", extra)
			}
		})
	}
}

func TestWriteMissingDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	err := WriteFile(filepath.Join(dir, "nope", "f"), []byte("x"), 0o600)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want one matching os.ErrNotExist", err)
	}
	if extra := leftovers(t, dir); len(extra) > 0 {
		t.Errorf("left behind: %v", extra)
	}
}

// A reader that reads while the file is replaced again and again sees one
// whole version each time, never a partial or empty file.
func TestReplaceIsAtomic(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.json")
	versions := [][]byte{
		bytes.Repeat([]byte("a"), 256<<10),
		bytes.Repeat([]byte("b"), 64<<10),
	}
	if err := WriteFile(path, versions[0], 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var reads int
	var bad []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			got, err := os.ReadFile(path)
			reads++
			if err != nil {
				bad = append(bad, err.Error())
			} else if !bytes.Equal(got, versions[0]) && !bytes.Equal(got, versions[1]) {
				bad = append(bad, fmt.Sprintf("%d bytes", len(got)))
			}
		}
	}()
	for i := 1; i <= 200; i++ {
		if err := WriteFile(path, versions[i%2], 0o600); err != nil {
			close(done)
			wg.Wait()
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("%d of %d reads saw a broken file, first: %s", len(bad), reads, bad[0])
	}
}

// Not parallel: it swaps the package's syncDir.
func TestDirectoryFsyncedAfterRename(t *testing.T) {
	orig := syncDir
	t.Cleanup(func() { syncDir = orig })
	dir := t.TempDir()
	path := filepath.Join(dir, "key.pem")
	var synced []string
	syncDir = func(d string) error {
		// The rename happened before the directory is synced.
		if got, err := os.ReadFile(path); err != nil || string(got) != "v" {
			t.Errorf("at dir fsync, %s = %q, %v; want the new content", path, got, err)
		}
		synced = append(synced, d)
		return orig(d)
	}
	for _, o := range []Options{{Perm: 0o600}, {Perm: 0o600, NoReplace: true}} {
		_ = os.Remove(path)
		synced = nil
		if err := Write(path, []byte("v"), o); err != nil {
			t.Fatal(err)
		}
		if len(synced) != 1 || synced[0] != dir {
			t.Errorf("%+v: directory fsyncs = %v, want [%s]", o, synced, dir)
		}
	}
	syncDir = func(string) error { return errors.New("disk on fire") }
	if err := WriteFile(path, []byte("w"), 0o600); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("err = %v, want the directory fsync's error", err)
	}
}

func mustWrite(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
