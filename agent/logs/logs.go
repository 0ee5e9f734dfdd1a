// Package logs builds the agent's zap logger: human-readable lines on
// stderr, without timestamps when stderr is the systemd journal (which
// stamps every line itself).
package logs

import (
	"fmt"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a logger at level ("debug", "info", "warn", "error").
func New(level string) (*zap.Logger, error) {
	lvl := zapcore.InfoLevel
	if level != "" {
		if err := lvl.UnmarshalText([]byte(level)); err != nil {
			return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
		}
	}
	enc := zap.NewDevelopmentEncoderConfig()
	enc.EncodeCaller = nil
	enc.CallerKey = ""
	enc.StacktraceKey = ""
	if os.Getenv("JOURNAL_STREAM") != "" {
		enc.TimeKey = ""
		enc.EncodeLevel = zapcore.CapitalLevelEncoder
	} else {
		enc.EncodeTime = zapcore.ISO8601TimeEncoder
	}
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(os.Stderr), lvl)
	return zap.New(core), nil
}
