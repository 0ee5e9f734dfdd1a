package tasks

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/devpilot/devpilot/shared/protocol"
)

// HostPath is where a file task's absolute path lands: below the agent's
// root dir, like every other path of the agent ("/" on a real server).
func (r *Runner) HostPath(p string) string {
	return filepath.Join(r.o.Root, filepath.Clean("/"+p))
}

// runFile writes a file atomically: a temp file in the same directory
// (missing parent directories are created 0755), fsync, chmod, chown,
// rename, fsync of the directory.
func (r *Runner) runFile(ctx context.Context, t *task, step int, s *protocol.FileSpec) outcome {
	if s == nil || s.Path == "" {
		return failed(protocol.ReasonInvalid, "file task without path")
	}
	if !filepath.IsAbs(s.Path) {
		return failed(protocol.ReasonInvalid, "file path %q is not absolute", s.Path)
	}
	content, err := base64.StdEncoding.DecodeString(s.ContentBase64)
	if err != nil {
		return failed(protocol.ReasonInvalid, "file content_base64: %v", err)
	}
	mode := uint64(0o644)
	if s.Mode != "" {
		mode, err = strconv.ParseUint(s.Mode, 8, 32)
		if err != nil || mode > 0o7777 {
			return failed(protocol.ReasonInvalid, "file mode %q: want octal like 0644", s.Mode)
		}
	}
	uid, gid := -1, -1
	if s.Owner != "" {
		u, err := user.Lookup(s.Owner)
		if err != nil {
			return failed(protocol.ReasonInvalid, "file owner: %v", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
	}
	if s.Group != "" {
		g, err := user.LookupGroup(s.Group)
		if err != nil {
			return failed(protocol.ReasonInvalid, "file group: %v", err)
		}
		gid, _ = strconv.Atoi(g.Gid)
	}
	if o, done := ended(ctx); done {
		return o
	}
	target := r.HostPath(s.Path)
	sum := sha256.Sum256(content)
	if err := writeAtomic(target, content, uint32(mode), uid, gid); err != nil {
		return failed("", "write %s: %v", s.Path, err)
	}
	o := outcome{state: protocol.TaskSucceeded, sha256: hex.EncodeToString(sum[:])}
	r.note(t, step, "wrote %s (%d bytes, mode %04o, sha256 %s)", s.Path, len(content), mode, o.sha256)
	return o
}

func writeAtomic(target string, content []byte, mode uint32, uid, gid int) error {
	dir := filepath.Dir(target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(target)+".devpilot-*")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(content); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	// Fchmod, not os.FileMode: setuid/setgid/sticky bits as given.
	if err := syscall.Fchmod(int(tmp.Fd()), mode); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	if uid != -1 || gid != -1 {
		if err := tmp.Chown(uid, gid); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
		// chown clears setuid/setgid: set the mode again.
		if err := syscall.Fchmod(int(tmp.Fd()), mode); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), target); err != nil {
		return err
	}
	ok = true
	return syncDir(dir)
}
