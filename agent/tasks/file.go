package tasks

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/devpilot/devpilot/shared/atomicfile"
	"github.com/devpilot/devpilot/shared/protocol"
)

// HostPath is where a file task's absolute path lands: below the agent's
// root dir, like every other path of the agent ("/" on a real server).
func (r *Runner) HostPath(p string) string {
	return filepath.Join(r.o.Root, filepath.Clean("/"+p))
}

// runFile writes a file atomically through atomicfile (missing parent
// directories are created 0755), with the given owner and mode.
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
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(target, content, atomicfile.Options{
		Perm:  fileMode(mode),
		Chown: uid != -1 || gid != -1,
		UID:   uid,
		GID:   gid,
	})
}

// fileMode turns octal mode bits (0o7777 at most) into an os.FileMode,
// setuid, setgid and sticky included.
func fileMode(mode uint32) os.FileMode {
	m := os.FileMode(mode) & os.ModePerm
	if mode&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if mode&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}
