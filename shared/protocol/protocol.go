// Package protocol is the contract between devpilot-agent and the control
// plane's hub: one JSON envelope per WebSocket text message, a tagged union
// on "type", with limits and a version. It has no dependencies beyond the
// standard library, and both sides import it.
//
// A session, in order:
//
//	hub   → agent  challenge {nonce, protocol}
//	agent → hub    hello     {server_id, mode: enroll|auth, bootstrap_token?, public_key, signature, facts}
//	hub   → agent  welcome   {server_id, heartbeat_interval_s}     (or error, then close)
//	agent → hub    heartbeat {health}                                every heartbeat_interval_s
//	hub   → agent  task / cancel / task_ack                        (deployment tasks)
//	agent → hub    task_log / task_result                          (deployment tasks)
//	hub   → agent  reboot    {id}            only if hello.capabilities has "reboot"
//	agent → hub    goodbye   {reason, reboot_id?}   then a normal close frame
//
// The signature in hello is ed25519 over SignedMessage(nonce, server_id):
// on enrollment it proves possession of the key being registered, later it
// is the agent's whole authentication.
package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Version is the protocol the code speaks. Bump it with a dated line:
//
//	1 (2026-11-23): challenge, hello, welcome, error, heartbeat; task, cancel, task_ack, task_log, task_result (tasks.go).
//
// Minor versions add optional fields and messages only: the envelope's v
// stays Version, old peers ignore what they do not know, and a side sends a
// new message only when the other advertised it (Hello.Capabilities).
//
//	1.1 (2026-12-02): hello.capabilities ("reboot"), facts.boot_id; reboot (hub → agent), goodbye (agent → hub).
//	1.2 (2026-12-02): capability "update"; update (hub → agent), update_status (agent → hub),
//	                  hello.last_update, welcome.last_update_ack, goodbye reason "update" (update.go).
const Version = 1

// Minor is the minor version the code speaks (see Version).
const Minor = 2

// MinMinor is the oldest minor version of MinVersion the hub accepts:
// every 1.x agent keeps working (see README, "Version skew").
const MinMinor = 0

// Capabilities an agent advertises in Hello.Capabilities.
const (
	// CapReboot: the agent reboots its host when sent a reboot message
	// (saying goodbye first), and reports Facts.BootID.
	CapReboot = "reboot"
	// CapUpdate (1.2): the agent installs signed agent releases when sent
	// an update message, and reports Hello.LastUpdate.
	CapUpdate = "update"
)

// MinVersion is the oldest agent protocol the hub still accepts, so a fleet
// provisioned months ago keeps working after a control plane upgrade.
const MinVersion = 1

// Limits both sides enforce.
const (
	MaxMessageBytes   = 1 << 20 // one envelope, encoded
	MaxLogChunkBytes  = 64 << 10
	NonceBytes        = 32
	DefaultHeartbeatS = 15
	// MissedHeartbeats is how many intervals without a heartbeat make a
	// server offline.
	MissedHeartbeats = 3
	// MaxTimeoutS bounds ExecSpec.TimeoutS (7 days, the longest task
	// deadline): a larger value is refused, never multiplied into an
	// overflowing duration.
	MaxTimeoutS = 7 * 24 * 3600
)

// Path is where agents dial the hub, relative to the control plane URL.
const Path = "/v1/agent/connect"

// Message types.
const (
	TypeChallenge  = "challenge"
	TypeHello      = "hello"
	TypeWelcome    = "welcome"
	TypeError      = "error"
	TypeHeartbeat  = "heartbeat"
	TypeTask       = "task"
	TypeCancel     = "cancel"
	TypeTaskAck    = "task_ack"
	TypeTaskLog    = "task_log"
	TypeTaskResult = "task_result"
	TypeReboot     = "reboot"  // 1.1, hub → agent, to agents with CapReboot
	TypeGoodbye    = "goodbye" // 1.1, agent → hub, before the agent closes its session

	TypeUpdate       = "update"        // 1.2, hub → agent, to agents with CapUpdate
	TypeUpdateStatus = "update_status" // 1.2, agent → hub, progress of an update
)

// Envelope is one message on the wire.
type Envelope struct {
	V    int             `json:"v"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data,omitempty"`
}

// Challenge opens every session.
type Challenge struct {
	Nonce    []byte `json:"nonce"` // NonceBytes random bytes (base64 in JSON)
	Protocol int    `json:"protocol"`
}

// Hello modes.
const (
	ModeEnroll = "enroll" // first contact: bootstrap token + new public key
	ModeAuth   = "auth"   // later contacts: signature with the enrolled key
)

// Hello is the agent's answer to the challenge.
type Hello struct {
	ServerID       string `json:"server_id"`
	Mode           string `json:"mode"`
	BootstrapToken string `json:"bootstrap_token,omitempty"` // enroll only; single use
	PublicKey      []byte `json:"public_key"`                // ed25519, 32 bytes
	Signature      []byte `json:"signature"`                 // over SignedMessage(nonce, server_id)
	AgentVersion   string `json:"agent_version"`
	Facts          Facts  `json:"facts"`
	// Capabilities (1.1) lists what the agent can do beyond protocol 1
	// (Cap*); absent from older agents.
	Capabilities []string `json:"capabilities,omitempty"`
	// LastUpdate (1.2) is the outcome of the agent's last update, sent by
	// whichever binary runs after it until a welcome acknowledges its id.
	LastUpdate *LastUpdate `json:"last_update,omitempty"`
}

// HasCapability reports whether the hello advertised c.
func (h Hello) HasCapability(c string) bool {
	for _, x := range h.Capabilities {
		if x == c {
			return true
		}
	}
	return false
}

// Facts describe the host, sent at every hello.
type Facts struct {
	Hostname string `json:"hostname"`
	OS       string `json:"os"`     // runtime.GOOS
	Arch     string `json:"arch"`   // runtime.GOARCH
	Distro   string `json:"distro"` // PRETTY_NAME from os-release
	Kernel   string `json:"kernel"`
	CPUs     int    `json:"cpus"`
	MemoryMB int    `json:"memory_mb"`
	Systemd  bool   `json:"systemd"` // running under systemd
	// BootID (1.1) names the host's current boot
	// (/proc/sys/kernel/random/boot_id): a reboot changes it, a reconnect
	// does not.
	BootID string `json:"boot_id,omitempty"`
}

// MaxReasonBytes bounds Goodbye.Reason.
const MaxReasonBytes = 512

// Reboot (1.1) asks the agent to reboot its host. ID names the request
// (the control plane's action id), echoed in Goodbye.RebootID.
type Reboot struct {
	ID string `json:"id"`
}

// Goodbye reasons.
const (
	GoodbyeReboot   = "reboot"   // rebooting the host, as asked by RebootID
	GoodbyeShutdown = "shutdown" // the agent is stopping
	GoodbyeError    = "error"    // the agent failed; Error says how
	GoodbyeUpdate   = "update"   // 1.2: restarting into an installed update; UpdateID names it
)

// Goodbye (1.1) is the agent's last message of a session: why it closes.
type Goodbye struct {
	Reason   string `json:"reason"`
	RebootID string `json:"reboot_id,omitempty"`
	UpdateID string `json:"update_id,omitempty"` // 1.2, with GoodbyeUpdate
	Error    string `json:"error,omitempty"`     // at most MaxReasonBytes
}

// SignedMessage is what the agent signs in hello.
func SignedMessage(nonce []byte, serverID string) []byte {
	m := make([]byte, 0, 32+len(nonce)+len(serverID))
	m = append(m, "devpilot-agent-hello-v1\x00"...)
	m = append(m, nonce...)
	m = append(m, 0)
	return append(m, serverID...)
}

// Welcome accepts the session.
type Welcome struct {
	ServerID           string `json:"server_id"`
	HeartbeatIntervalS int    `json:"heartbeat_interval_s"`
	Protocol           int    `json:"protocol"` // what the hub speaks
	// LastUpdateAck (1.2) is the id of hello.last_update the hub recorded:
	// the agent stops reporting it.
	LastUpdateAck string `json:"last_update_ack,omitempty"`
}

// Error refuses a hello (the hub closes the connection after it) or
// reports a problem with a message.
type Error struct {
	Code    string `json:"code"` // see Err* below
	Message string `json:"message"`
}

// Error codes the hub sends.
const (
	ErrBadRequest     = "bad_request"
	ErrUnsupported    = "unsupported_protocol"
	ErrTokenInvalid   = "bootstrap_token_invalid" // unknown, used, expired or for another server
	ErrAuthFailed     = "auth_failed"             // unknown server or bad signature
	ErrServerDeleted  = "server_deleted"          // the agent should stop retrying
	ErrSessionReplace = "session_replaced"        // another session for the same server took over
	// ErrQuarantined: two agents used this server's identity key; no
	// session until an admin rekeys the server (devpilot servers rekey)
	// and the real agent enrolls again (devpilot-agent enroll).
	ErrQuarantined = "server_quarantined"
	// ErrKeyRevoked: the key signing the hello was retired by a rekey.
	ErrKeyRevoked = "identity_revoked"
)

// Heartbeat carries the agent's health.
type Heartbeat struct {
	Health Health `json:"health"`
}

// Health is a snapshot of the host.
type Health struct {
	UptimeS      int64   `json:"uptime_s"`
	Load1        float64 `json:"load1"`
	Load5        float64 `json:"load5"`
	Load15       float64 `json:"load15"`
	CPUPercent   float64 `json:"cpu_percent"`
	MemTotalMB   int64   `json:"mem_total_mb"`
	MemUsedMB    int64   `json:"mem_used_mb"`
	Disks        []Disk  `json:"disks"`
	AgentVersion string  `json:"agent_version"`
}

// Disk is one mounted file system.
type Disk struct {
	Mount   string `json:"mount"`
	TotalMB int64  `json:"total_mb"`
	UsedMB  int64  `json:"used_mb"`
}

// Encode wraps a payload in an envelope of the given type.
func Encode(typ string, payload any) ([]byte, error) {
	var data json.RawMessage
	if payload != nil {
		b, err := json.Marshal(payload)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", typ, err)
		}
		data = b
	}
	b, err := json.Marshal(Envelope{V: Version, Type: typ, Data: data})
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", typ, err)
	}
	if len(b) > MaxMessageBytes {
		return nil, fmt.Errorf("encode %s: %d bytes is over the %d byte limit", typ, len(b), MaxMessageBytes)
	}
	return b, nil
}

// ErrTooLarge is returned for messages over MaxMessageBytes.
var ErrTooLarge = errors.New("message too large")

// Decode reads an envelope, checking size and version. The payload is left
// raw; use DecodeData with the struct for the Type.
func Decode(b []byte) (Envelope, error) {
	var e Envelope
	if len(b) > MaxMessageBytes {
		return e, ErrTooLarge
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("decode envelope: %w", err)
	}
	if e.Type == "" {
		return e, errors.New("decode envelope: no type")
	}
	if e.V < MinVersion {
		return e, fmt.Errorf("decode envelope: protocol %d is older than the oldest supported (%d)", e.V, MinVersion)
	}
	return e, nil
}

// DecodeData unmarshals an envelope's payload into v.
func DecodeData(e Envelope, v any) error {
	if len(e.Data) == 0 {
		return fmt.Errorf("decode %s: no data", e.Type)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("decode %s: %w", e.Type, err)
	}
	return nil
}
