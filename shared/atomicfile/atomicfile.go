// Package atomicfile replaces files so that a reader sees the old content or
// the new, never a mix, and the new content survives a crash once the call
// returned: a temp file in the same directory, written, chowned and chmodded,
// fsynced, renamed over the target, then the directory fsynced. Both the agent
// and the control plane write their files through it.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
)

// Options says how Write creates the file.
type Options struct {
	// Perm is the file's mode: permission bits, plus os.ModeSetuid,
	// os.ModeSetgid and os.ModeSticky when wanted.
	Perm os.FileMode
	// Chown sets the file's owner to UID and GID (-1 keeps that one as
	// the writing process has it) before the mode is set, since chown
	// clears setuid and setgid.
	Chown    bool
	UID, GID int
	// NoReplace fails with an error matching os.ErrExist if path exists,
	// instead of replacing it.
	NoReplace bool
}

// WriteFile replaces path with data, mode perm.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return Write(path, data, Options{Perm: perm})
}

// Write writes data to path as o says. On error no temp file is left
// behind and path is as it was.
func Write(path string, data []byte, o Options) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*") // created 0600
	if err != nil {
		return fmt.Errorf("create temp file: %w", err)
	}
	name := tmp.Name()
	defer func() {
		if tmp != nil {
			_ = tmp.Close()
		}
		// A no-op after a rename; after a link it drops the temp name.
		_ = os.Remove(name)
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if o.Chown {
		if err := tmp.Chown(o.UID, o.GID); err != nil {
			return fmt.Errorf("chown %s: %w", name, err)
		}
	}
	if err := tmp.Chmod(o.Perm); err != nil && runtime.GOOS != "windows" {
		return fmt.Errorf("chmod %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", name, err)
	}
	err = tmp.Close()
	tmp = nil
	if err != nil {
		return fmt.Errorf("close %s: %w", name, err)
	}
	if o.NoReplace {
		err = link(name, path, data, o.Perm)
	} else {
		err = os.Rename(name, path)
	}
	if err != nil {
		return err
	}
	return syncDir(dir)
}

// link gives the temp file its final name unless that name exists.
func link(tmp, path string, data []byte, perm os.FileMode) error {
	err := os.Link(tmp, path)
	if err == nil || errors.Is(err, os.ErrExist) {
		return err
	}
	// No hard links on this file system: an exclusive create instead.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm.Perm())
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return f.Close()
}

// syncDir makes the rename durable. A variable so a test can see it called.
var syncDir = func(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync dir: %w", err)
	}
	defer func() { _ = d.Close() }()
	// Some file systems cannot fsync a directory; the rename stands anyway.
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}
